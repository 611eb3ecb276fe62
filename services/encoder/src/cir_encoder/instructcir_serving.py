"""Serving an InstructCIR checkpoint (method.md 4.2) on the encoder's CLIP: loading it, running it on
batches, and naming it. No protos here.

The checkpoint is loaded against the very CLIP the encoder serves (its text tower is shared, its image
tower copied), so a checkpoint trained on other CLIP weights, or one that does not fit the CLIP's shapes,
stops the encoder at start instead of answering with meaningless vectors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cir_encoder.clip_loading import LoadedClip
from cir_encoder.instructcir import LoadedInstructCir, load_instructcir
from cir_encoder.settings import ENV_PREFIX

CHECKPOINT_SETTING = f"{ENV_PREFIX}INSTRUCTCIR_CHECKPOINT"
FAMILY = "instructcir"


def clip_identity(clip: LoadedClip) -> dict[str, str]:
    """The served CLIP as InstructCIR checkpoints name the CLIP they were trained on."""
    return {"model": clip.model_name, "sha256": clip.checkpoint_sha256}


def load_served_instructcir(path: str, clip: LoadedClip) -> LoadedInstructCir:
    """The checkpoint at `path` on the served CLIP, in eval mode on its device and dtype.

    ConfigError (from `load_instructcir`) names the file and what was expected when it is missing, is not
    an InstructCIR checkpoint of this format, or was trained on another CLIP.
    """
    return load_instructcir(path, clip.model, clip_identity(clip))


class InstructCirModel:
    """The loaded network's batch work, synchronous: it runs on the batcher's worker thread.

    Takes pixels already transformed by the encoder's preprocessing and token ids from the CLIP's own
    tokenizer; returns float32 numpy arrays (raw, except the Eq. 3 fused query, which is unit-norm).
    """

    def __init__(self, loaded: LoadedInstructCir, clip: LoadedClip) -> None:
        self.loaded = loaded
        self.network = loaded.network
        # The CLIP's weights and precision are part of it: the same checkpoint on fp16 and fp32 replicas
        # sharing a cache must not mix vectors.
        self.identity = (
            f"{FAMILY}@{loaded.sha256}/{clip.model_name}@{clip.checkpoint_sha256}/{clip.precision}"
        )

    @property
    def has_fusion(self) -> bool:
        return self.network.fusion_weight is not None

    @torch.inference_mode()
    def embed_queries(self, pixels: torch.Tensor, token_ids: torch.Tensor, fused: bool) -> np.ndarray:
        device = next(self.network.parameters()).device
        pixels, token_ids = pixels.to(device), token_ids.to(device)
        if fused:
            features = self.network.fused_query(pixels, token_ids)
        else:
            features = self.network.encode_query(pixels, token_ids)
        return features.float().cpu().numpy()

    @torch.inference_mode()
    def embed_targets(self, pixels: torch.Tensor) -> np.ndarray:
        device = next(self.network.parameters()).device
        return self.network.encode_target(pixels.to(device)).float().cpu().numpy()


def checkpoint_name(model: InstructCirModel) -> str:
    """The checkpoint's file name: what GetModelInfo and the responses call it."""
    return Path(model.loaded.path).name


def checkpoint_details(model: InstructCirModel) -> dict[str, str]:
    """Where the checkpoint is, the CLIP it was trained on, and how long it trained (what its file says)."""
    loaded = model.loaded
    details = {"path": loaded.path, "clip": loaded.clip_identity.get("model", "")}
    for key in ("epochs", "steps", "triplets"):
        if key in loaded.training:
            details[f"training_{key}"] = str(loaded.training[key])
    return details
