"""The encoder's part of the tiny model pack: a random CLIP with a real architecture config and a random Phi.

The files are laid out so that every production loading form works on them: `clip/` is a config dir for
`add_model_config` (cir-tiny-clip.json) and, through open_clip_config.json, also a `local-dir:` folder.
The real CLIP BPE tokenizer ships inside open_clip, so tokenisation (`$` -> 259) is the real one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cir_encoder.phi import Phi, Pic2WordMapping
from cir_tools.packs.common import CLIP_MEAN, CLIP_STD

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
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    clip_dir = out_dir / "clip"
    phi_dir = out_dir / "phi"
    clip_dir.mkdir(parents=True, exist_ok=True)
    phi_dir.mkdir(parents=True, exist_ok=True)

    config = tiny_clip_config()
    (clip_dir / f"{TINY_CLIP_NAME}.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # The local-dir form reads this file instead; it also carries the preprocessing.
    local_dir_config = {
        "model_cfg": config,
        "preprocess_cfg": {
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }
    (clip_dir / "open_clip_config.json").write_text(
        json.dumps(local_dir_config, indent=2) + "\n", encoding="utf-8"
    )

    torch.manual_seed(seed)
    model = CLIP(**config)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    checkpoint = clip_dir / CLIP_CHECKPOINT_NAME
    save_file(
        state, str(checkpoint), metadata={"format": "pt"}
    )  # one key: safetensors orders metadata at random

    phi = Phi(TINY_EMBED_DIM, TINY_TEXT_WIDTH)
    phi_path = phi_dir / PHI_CHECKPOINT_NAME
    torch.save({"Phi": phi.state_dict()}, phi_path)
    # One network per textual-inversion strategy, each in its publisher's file format.
    searle_path = phi_dir / SEARLE_CHECKPOINT_NAME
    torch.save({"Phi": Phi(TINY_EMBED_DIM, TINY_TEXT_WIDTH).state_dict()}, searle_path)
    pic2word = Pic2WordMapping(TINY_EMBED_DIM, TINY_TEXT_WIDTH, hidden_dim=64, num_blocks=2)
    pic2word_path = phi_dir / PIC2WORD_CHECKPOINT_NAME
    torch.save(
        {"state_dict_img2text": {f"module.{k}": v for k, v in pic2word.state_dict().items()}}, pic2word_path
    )
    return TinyEncoderFiles(
        config_dir=clip_dir,
        checkpoint=checkpoint,
        phi=phi_path,
        mapping_networks={"lincir": phi_path, "searle": searle_path, "pic2word": pic2word_path},
    )
