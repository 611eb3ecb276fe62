"""Production loading of BLIP-2 (model + processor) through transformers' `from_pretrained`.

A local folder is the normal case (weights are never fetched at run time on the CPU machines); a hub id
works where the hub is reachable or cached. The identity recorded with every caption is the folder name
plus a sha256 over the weight files, or the hub id plus the resolved commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cir_common.checksums import weights_sha256
from cir_common.errors import ConfigError
from cir_common.torch_placement import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from transformers import Blip2ForConditionalGeneration, Blip2Processor


@dataclass(frozen=True)
class LoadedBlip2:
    """BLIP-2 in eval mode, its processor, and what identifies the weights."""

    model: Blip2ForConditionalGeneration
    processor: Blip2Processor
    identity: str
    weights_sha256: str | None
    image_size: tuple[int, int]
    num_query_tokens: int
    device: str
    dtype: torch.dtype


def load_blip2(model_path_or_id: str, device: str, dtype: str) -> LoadedBlip2:
    """Load a BLIP-2 captioning model and its processor.

    `device`: "auto" | "cpu" | "cuda[:N]". `dtype`: "auto" (float16 on CUDA, float32 elsewhere) or
    float32 / float16 / bfloat16.
    """
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    resolved_device = resolve_device(device, "captioner")
    torch_dtype = resolve_dtype(dtype, resolved_device, "captioner")
    folder = Path(model_path_or_id).expanduser()
    is_local = folder.is_dir()
    if not is_local and (model_path_or_id.startswith(("/", ".", "~")) or folder.exists()):
        raise ConfigError(
            f"captioner model {model_path_or_id!r} is not a folder; point it at a saved BLIP-2 folder"
        )
    source = str(folder) if is_local else model_path_or_id

    try:
        processor = Blip2Processor.from_pretrained(source)
        model = Blip2ForConditionalGeneration.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as error:
        where = "folder" if is_local else "hub id (no hub here? save the model to a folder and use its path)"
        raise ConfigError(f"could not load BLIP-2 from {where} {model_path_or_id!r}: {error}") from error
    if processor.num_query_tokens is None:
        # Without it the processor adds no image placeholder tokens and generate() fails on shapes.
        raise ConfigError(
            f"BLIP-2 processor in {model_path_or_id!r} has no num_query_tokens; set it to the model's "
            f"{model.config.num_query_tokens} in processor_config.json"
        )
    if processor.num_query_tokens != model.config.num_query_tokens:
        raise ConfigError(
            f"BLIP-2 {model_path_or_id!r}: processor num_query_tokens {processor.num_query_tokens} "
            f"does not match the model's {model.config.num_query_tokens}"
        )
    model.to(resolved_device)
    model.eval()
    model.requires_grad_(False)

    if is_local:
        weights_sha = weights_sha256(folder)
        identity = f"{folder.resolve().name}@sha256:{weights_sha}"
    else:
        weights_sha = None
        identity = f"{model_path_or_id}@{getattr(model.config, '_commit_hash', None) or 'unknown-revision'}"
    return LoadedBlip2(
        model=model,
        processor=processor,
        identity=identity,
        weights_sha256=weights_sha,
        image_size=_processor_image_size(processor.image_processor),
        num_query_tokens=int(model.config.num_query_tokens),
        device=resolved_device,
        dtype=torch_dtype,
    )


def _processor_image_size(image_processor: Any) -> tuple[int, int]:
    size = image_processor.size
    if isinstance(size, dict):
        if "height" in size and "width" in size:
            return (int(size["height"]), int(size["width"]))
        if "shortest_edge" in size:
            return (int(size["shortest_edge"]), int(size["shortest_edge"]))
    height = getattr(size, "height", None)
    width = getattr(size, "width", None)
    if height is not None and width is not None:
        return (int(height), int(width))
    raise ConfigError(f"BLIP-2 image processor has an unexpected size setting {size!r}")
