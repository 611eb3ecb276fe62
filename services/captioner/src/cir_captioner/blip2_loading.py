"""Production loading of BLIP-2 (model + processor) through transformers' `from_pretrained`.

A local folder is the normal case (weights are never fetched at run time on the CPU machines); a hub id
works where the hub is reachable or cached. The identity recorded with every caption is the folder name
plus a sha256 over the weight files, or the hub id plus the resolved commit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cir_common.errors import ConfigError

if TYPE_CHECKING:
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


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

    resolved_device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, resolved_device)
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


def weights_sha256(folder: Path) -> str:
    """sha256 over the folder's weight files, in name order (one file: that file's own sha256)."""
    files = sorted({p for pattern in _WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise ConfigError(f"model folder {folder} holds no *.safetensors or *.bin weight file")
    file_hashes = [(p.name, _sha256_file(p)) for p in files]
    if len(file_hashes) == 1:
        return file_hashes[0][1]
    combined = hashlib.sha256()
    for name, digest in file_hashes:
        combined.update(f"{name}:{digest}\n".encode())
    return combined.hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_device(device: str) -> str:
    choice = device.strip().lower()
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"captioner device {device!r} was asked for but torch sees no CUDA GPU; use cpu or auto"
        )
    if choice != "cpu" and not choice.startswith("cuda"):
        raise ConfigError(f"unknown captioner device {device!r}; use auto, cpu, cuda or cuda:N")
    return choice


def _resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ConfigError(f"unknown captioner dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return _DTYPES[dtype]


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
