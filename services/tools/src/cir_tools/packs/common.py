"""What the model builders share (the tiny pack's and the paper-shaped ones): CLIP's image normalisation
and seeded random models.

torch is imported inside `random_model`, so the constants import anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

# OpenAI CLIP normalisation, which the real checkpoints (CLIP, BLIP-2's ViT) use too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# save_pretrained's shard size: like the published checkpoints, and one shard at a time in memory while a
# 7 B model is written.
SHARD_SIZE = "5GB"

ModelT = TypeVar("ModelT")


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The pad, bos and eos ids a transformers text config takes from the tokenizer it is trained with."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def random_model(
    model_class: Callable[[Any], ModelT],
    config: object,
    seed: int,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> ModelT:
    """`model_class(config)` with its weights drawn from `seed`: the same seed writes the same bytes.

    `device` ("cuda", "meta", ...) and `dtype` are where and in which precision the weights are created
    (default: the CPU, float32): a 7 B model is drawn on the GPU in fp16 in seconds, and on "meta" it is
    only shapes (parameter counts without memory).
    """
    import torch

    torch.manual_seed(seed)
    if device is None and dtype is None:
        return model_class(config)
    previous = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device or "cpu"):
            return model_class(config)
    finally:
        torch.set_default_dtype(previous)
