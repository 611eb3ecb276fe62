"""What the tiny model builders share: CLIP's image normalisation and seeded random models.

torch is imported inside `random_model`, so the constants import anywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# OpenAI CLIP normalisation, which the real checkpoints (CLIP, BLIP-2's ViT) use too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ModelT = TypeVar("ModelT")


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The pad, bos and eos ids a transformers text config takes from the tokenizer it is trained with."""
    return {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def random_model(model_class: Callable[[Any], ModelT], config: object, seed: int) -> ModelT:
    """`model_class(config)` with its weights drawn from `seed`: the same seed writes the same bytes."""
    import torch

    torch.manual_seed(seed)
    return model_class(config)
