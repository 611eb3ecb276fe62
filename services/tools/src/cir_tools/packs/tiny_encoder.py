"""The encoder's part of the tiny model pack: a random CLIP with a real architecture config and a random Phi.

The files are laid out so that every production loading form works on them: `clip/` is a config dir for
`add_model_config` (cir-tiny-clip.json) and, through open_clip_config.json, also a `local-dir:` folder.
The real CLIP BPE tokenizer ships inside open_clip, so tokenisation (`$` -> 259) is the real one.
`write_open_clip` and `write_phi` write any architecture this way (the paper-shaped pack's ViT-L/14 too);
`save_open_clip`, `save_phi` and `save_pic2word` save trained models the same way (`cir_tools.training`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cir_encoder.phi import Phi, Pic2WordMapping
from cir_tools.packs.common import CLIP_MEAN, CLIP_STD, random_model

TINY_CLIP_NAME = "cir-tiny-clip"
TINY_EMBED_DIM = 32
TINY_TEXT_WIDTH = 64
TINY_IMAGE_SIZE = 64
CLIP_CHECKPOINT_NAME = "open_clip_model.safetensors"
PHI_CHECKPOINT_NAME = "phi-lincir-tiny.pt"
SEARLE_CHECKPOINT_NAME = "phi-searle-tiny.pt"
PIC2WORD_CHECKPOINT_NAME = "pic2word-tiny.pt"


@dataclass(frozen=True)
class TinyEncoderFiles:
    config_dir: Path
    checkpoint: Path
    phi: Path
    mapping_networks: dict[str, Path]


def tiny_clip_config() -> dict[str, Any]:
    """open_clip architecture config of the tiny CLIP (same keys as the built-in ViT configs)."""
    return {
        "embed_dim": TINY_EMBED_DIM,
        "vision_cfg": {
            "image_size": TINY_IMAGE_SIZE,
            "layers": 2,
            "width": 64,
            "head_width": 32,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": TINY_TEXT_WIDTH,
            "heads": 2,
            "layers": 2,
        },
    }


def build_tiny_encoder(out_dir: Path, seed: int = 0) -> TinyEncoderFiles:
    """Write the tiny CLIP (config + safetensors) and a LinCIR-format Phi under `out_dir`."""
    clip_dir = out_dir / "clip"
    phi_dir = out_dir / "phi"
    checkpoint = write_open_clip(clip_dir, TINY_CLIP_NAME, tiny_clip_config(), seed)
    phi_path = write_phi(phi_dir / PHI_CHECKPOINT_NAME, TINY_EMBED_DIM, TINY_TEXT_WIDTH)
    # One network per textual-inversion strategy, each in its publisher's file format.
    searle_path = write_phi(phi_dir / SEARLE_CHECKPOINT_NAME, TINY_EMBED_DIM, TINY_TEXT_WIDTH)
    pic2word = Pic2WordMapping(TINY_EMBED_DIM, TINY_TEXT_WIDTH, hidden_dim=64, num_blocks=2)
    pic2word_path = save_pic2word(pic2word, phi_dir / PIC2WORD_CHECKPOINT_NAME)
    return TinyEncoderFiles(
        config_dir=clip_dir,
        checkpoint=checkpoint,
        phi=phi_path,
        mapping_networks={"lincir": phi_path, "searle": searle_path, "pic2word": pic2word_path},
    )


def write_open_clip(
    clip_dir: Path,
    name: str,
    config: dict[str, Any],
    seed: int,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write the architecture `config` as `<name>.json` and as a `local-dir:` folder's open_clip_config.json,
    and a CLIP of it with random weights drawn from `seed` (on `device`, in `dtype`); return the checkpoint.
    """
    from open_clip.model import CLIP

    model = random_model(lambda cfg: CLIP(**cfg), config, seed, device=device, dtype=dtype)
    return save_open_clip(model, clip_dir, name, config)


def open_clip_preprocess_config() -> dict[str, Any]:
    """The eval-time image preprocessing the `local-dir:` form reads (open_clip's PreprocessCfg keys)."""
    return {
        "mean": list(CLIP_MEAN),
        "std": list(CLIP_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }


def save_open_clip(model: torch.nn.Module, clip_dir: Path, name: str, config: dict[str, Any]) -> Path:
    """Save `model` (an open_clip CLIP of architecture `config`, random or trained) in the pack layout:
    `<name>.json` for a config dir, open_clip_config.json for `local-dir:`, and the weights as safetensors.
    Returns the checkpoint path.
    """
    from safetensors.torch import save_file

    clip_dir.mkdir(parents=True, exist_ok=True)
    (clip_dir / f"{name}.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # The local-dir form reads this file instead; it also carries the preprocessing.
    local_dir_config = {"model_cfg": config, "preprocess_cfg": open_clip_preprocess_config()}
    (clip_dir / "open_clip_config.json").write_text(
        json.dumps(local_dir_config, indent=2) + "\n", encoding="utf-8"
    )
    state = {key: tensor.detach().to("cpu").contiguous() for key, tensor in model.state_dict().items()}
    checkpoint = clip_dir / CLIP_CHECKPOINT_NAME
    save_file(
        state, str(checkpoint), metadata={"format": "pt"}
    )  # one key: safetensors orders metadata at random
    return checkpoint


def write_phi(path: Path, embed_dim: int, text_width: int) -> Path:
    """A random Phi (embed_dim -> 4x -> 4x -> text_width), saved as LinCIR and SEARLE do ({"Phi": ...})."""
    return save_phi(Phi(embed_dim, text_width), path)


def save_phi(phi: Phi, path: Path) -> Path:
    """Save a Phi (random or trained) as LinCIR and SEARLE publish it: `{"Phi": state_dict}`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"Phi": {key: value.detach().cpu() for key, value in phi.state_dict().items()}}, path)
    return path


def save_pic2word(mapping: Pic2WordMapping, path: Path) -> Path:
    """Save a Pic2Word mapping as Pic2Word publishes it: `{"state_dict_img2text": {"module." + key: ...}}`
    (its training ran under DataParallel, hence the prefix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"module.{key}": value.detach().cpu() for key, value in mapping.state_dict().items()}
    torch.save({"state_dict_img2text": state}, path)
    return path
