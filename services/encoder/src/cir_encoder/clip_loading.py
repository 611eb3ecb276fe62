"""Production loading of open_clip models: one function for every way a CLIP model can be named.

Accepted forms (open_clip 3.3):
- a built-in model name + a pretrained tag ("ViT-L-14", "openai"): downloads, so it needs the hub;
- a model name + a local checkpoint file (torch state dict or .safetensors);
- a custom architecture: `config_dir` holds `<name>.json`, registered with `open_clip.add_model_config`,
  then the name + a local checkpoint as above;
- `local-dir:/path`: a folder with `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...}) and
  one weight file (*.safetensors / *.bin / *.pth; open_clip ignores *.pt there); `pretrained` must be None.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cir_common.checksums import sha256_file
from cir_common.errors import ConfigError
from cir_common.torch_placement import resolve_device
from cir_common.vocabulary import Precision

LOCAL_DIR_PREFIX = "local-dir:"
_PRECISIONS = tuple(p.value for p in Precision if p is not Precision.AUTO)
_LOCAL_DIR_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class LoadedClip:
    """A CLIP model in eval mode with everything the encoder needs to use and identify it."""

    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor]
    preprocess: Callable[[Any], torch.Tensor]
    model_name: str
    # sha256 of the weight file; for a pretrained tag, "tag:<tag>" (the file is open_clip's business).
    checkpoint_sha256: str
    embed_dim: int
    text_width: int
    context_length: int
    image_size: tuple[int, int]
    device: str
    precision: str


def load_clip(
    model: str,
    pretrained: str | None,
    config_dir: str | None,
    device: str,
    precision: str,
) -> LoadedClip:
    """Load a CLIP model with its own tokenizer and eval-time preprocess transform.

    `device` may be "auto"; `precision` one of fp32/fp16/bf16/pure_fp16/pure_bf16 or "auto"
    (fp16 on CUDA, fp32 elsewhere).
    """
    import open_clip

    resolved_device = resolve_device(device)
    resolved_precision = _resolve_precision(precision, resolved_device)
    if config_dir:
        _register_config_dir(Path(config_dir).expanduser())

    if model.startswith(LOCAL_DIR_PREFIX):
        if pretrained:
            raise ConfigError(
                f"clip model {model!r} names a local-dir, which carries its own weights; "
                f"leave clip_pretrained empty"
            )
        checkpoint_id = _local_dir_identity(Path(model.removeprefix(LOCAL_DIR_PREFIX)).expanduser())
    else:
        if model.startswith("hf-hub:"):
            raise ConfigError(
                f"clip model {model!r}: hf-hub models need the hub; download them and use local-dir:"
            )
        if model.replace("/", "-") not in open_clip.list_models():
            raise ConfigError(
                f"unknown clip model {model!r}: not an open_clip architecture"
                + (
                    f" nor a <name>.json in {config_dir}"
                    if config_dir
                    else "; set clip_config_dir for a custom one"
                )
            )
        if not pretrained:
            raise ConfigError(
                f"clip model {model!r} has no weights: set clip_pretrained to a checkpoint file "
                f"or a pretrained tag"
            )
        checkpoint_id = _pretrained_identity(model, pretrained)

    try:
        clip_model, preprocess = open_clip.create_model_from_pretrained(
            model,
            pretrained=None if model.startswith(LOCAL_DIR_PREFIX) else pretrained,
            precision=resolved_precision,
            device=resolved_device,
        )
    except FileNotFoundError as error:
        raise ConfigError(f"clip model {model!r}: {error}") from error
    except (RuntimeError, ValueError, OSError) as error:
        hint = ""
        if checkpoint_id.startswith("tag:"):
            hint = " (a pretrained tag downloads from the hub; offline, give the path of the downloaded file)"
        raise ConfigError(
            f"could not load clip model {model!r} with weights {pretrained!r}: {error}{hint}"
        ) from error

    if checkpoint_id.startswith("tag:"):
        checkpoint_id = _downloaded_tag_identity(model, pretrained, checkpoint_id)
    clip_model.eval()
    clip_model.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(model)
    return LoadedClip(
        model=clip_model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        model_name=model,
        checkpoint_sha256=checkpoint_id,
        embed_dim=_embed_dim(clip_model),
        text_width=_text_width(clip_model, model),
        context_length=int(clip_model.context_length),
        image_size=_image_size(clip_model),
        device=resolved_device,
        precision=resolved_precision,
    )


def _resolve_precision(precision: str, device: str) -> str:
    if precision == Precision.AUTO:
        return Precision.FP16.value if device.startswith("cuda") else Precision.FP32.value
    if precision not in _PRECISIONS:
        raise ConfigError(f"unknown clip precision {precision!r}; use auto, {', '.join(_PRECISIONS)}")
    return str(precision)


def _register_config_dir(config_dir: Path) -> None:
    import open_clip

    if not config_dir.is_dir():
        raise ConfigError(
            f"clip_config_dir {config_dir} is not a folder; it must hold <model name>.json files"
        )
    configs = sorted(config_dir.glob("*.json"))
    usable = [c for c in configs if _is_model_config(c)]
    if not usable:
        raise ConfigError(
            f"clip_config_dir {config_dir} holds no open_clip model config "
            f"(a JSON with embed_dim, vision_cfg, text_cfg); found {[c.name for c in configs]}"
        )
    # add_model_config rescans every registered folder: registering the same one twice is harmless.
    open_clip.add_model_config(config_dir)


def _is_model_config(path: Path) -> bool:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and all(
        key in content for key in ("embed_dim", "vision_cfg", "text_cfg")
    )


def _pretrained_identity(model: str, pretrained: str) -> str:
    import open_clip

    file = Path(pretrained).expanduser()
    if file.is_file():
        return cached_file_sha256(file)
    tags = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
    if pretrained in tags:
        return f"tag:{pretrained}"
    raise ConfigError(
        f"clip_pretrained {pretrained!r} for {model!r} is neither an existing file nor a known tag "
        f"(tags: {', '.join(tags) or 'none'})"
    )


def _downloaded_tag_identity(model: str, tag: str, fallback: str) -> str:
    """sha256 of the Hugging Face cache file a pretrained tag loaded from, found without a hub request.

    open_clip prefers the hub copy (`hf_hub`: "org/repo/" or "org/repo/filename") and its safetensors twin;
    a tag served from a plain URL keeps `fallback`.
    """
    from huggingface_hub import try_to_load_from_cache
    from open_clip.pretrained import get_pretrained_cfg

    repo, _, filename = get_pretrained_cfg(model.replace("/", "-"), tag).get("hf_hub", "").rpartition("/")
    if not repo:
        return fallback
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename.rsplit(".", 1)[0].replace("pytorch_model", "model") + ".safetensors")
    for name in names:
        path = try_to_load_from_cache(repo, name)
        if isinstance(path, str) and Path(path).is_file():
            return cached_file_sha256(Path(path))
    return fallback


def cached_file_sha256(path: Path) -> str:
    """sha256 of a file; free for Hugging Face cache entries, whose blob is named by its own sha256."""
    blob = Path(os.path.realpath(path)).name
    if _SHA256_HEX.fullmatch(blob):
        return blob
    return sha256_file(path)


def _local_dir_identity(folder: Path) -> str:
    if not (folder / "open_clip_config.json").is_file():
        raise ConfigError(
            f"local-dir {folder} has no open_clip_config.json; it needs one with a 'model_cfg' entry"
        )
    weights = sorted(p for p in folder.iterdir() if p.suffix in _LOCAL_DIR_WEIGHT_SUFFIXES and p.is_file())
    if len(weights) != 1:
        # open_clip would pick one by a preference list; an ambiguous folder is a configuration mistake here.
        raise ConfigError(
            f"local-dir {folder} must hold exactly one weight file (*.safetensors, *.bin or *.pth), "
            f"found {[p.name for p in weights]}"
        )
    return sha256_file(weights[0])


def _embed_dim(clip_model: torch.nn.Module) -> int:
    projection = getattr(clip_model, "text_projection", None)
    if isinstance(projection, torch.Tensor):
        return int(projection.shape[-1])
    if isinstance(projection, torch.nn.Linear):
        return int(projection.out_features)
    return int(clip_model.visual.output_dim)


def _text_width(clip_model: torch.nn.Module, model: str) -> int:
    # Pseudo-token injection writes into the token embedding table, so a text tower without one is unusable.
    embedding = getattr(clip_model, "token_embedding", None)
    if embedding is None:
        embedding = getattr(getattr(clip_model, "text", None), "token_embedding", None)
    if not isinstance(embedding, torch.nn.Embedding):
        raise ConfigError(
            f"clip model {model!r} has no token embedding table (a Hugging Face text tower?); "
            f"pseudo-token injection needs an open_clip text transformer"
        )
    return int(embedding.embedding_dim)


def _image_size(clip_model: torch.nn.Module) -> tuple[int, int]:
    size = getattr(clip_model.visual, "image_size", None)
    if size is None:
        size = clip_model.visual.preprocess_cfg["size"]
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))
