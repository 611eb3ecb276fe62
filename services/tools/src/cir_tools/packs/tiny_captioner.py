"""The captioner's part of the tiny model pack: a random BLIP-2 (ViT + Q-Former + OPT, all 32 wide).

Saved with `save_pretrained` next to its processor, so `load_blip2` reads it exactly as a real
Salesforce/blip2-* folder. The tokenizer is trained on synthetic captions (no tokenizer can be downloaded).
`write_blip2` writes any BLIP-2 shape this way (the paper-shaped pack's OPT-6.7b one too); `save_blip2`
is the one writer of every BLIP-2 folder, random or trained (`cir_tools.training.blip2`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cir_tools.packs.common import CLIP_MEAN, CLIP_STD, SHARD_SIZE, random_model, special_token_ids
from cir_tools.packs.tokenizer import IMAGE, synthetic_captions, train_bpe_tokenizer

if TYPE_CHECKING:
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        PreTrainedTokenizerFast,
    )

TINY_BLIP2_IMAGE_SIZE = 32
TINY_BLIP2_QUERY_TOKENS = 8
_TOKENIZER_VOCAB = 1000
_CAPTIONS = 2000


@dataclass(frozen=True)
class Blip2Shapes:
    """Keyword arguments of the three parts' transformers configs (Blip2VisionConfig, Blip2QFormerConfig,
    OPTConfig) and the query count. A part without `vocab_size` gets the tokenizer's."""

    vision: dict[str, Any]
    qformer: dict[str, Any]
    text: dict[str, Any]
    num_query_tokens: int
    # Set on generation_config: a random OPT rarely emits EOS, so `generate` with defaults stays short.
    generation: dict[str, Any] = field(default_factory=lambda: {"max_new_tokens": 20})


TINY_BLIP2 = Blip2Shapes(
    vision={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TINY_BLIP2_IMAGE_SIZE,
        "patch_size": 8,
    },
    qformer={
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "encoder_hidden_size": 32,
    },
    text={
        "hidden_size": 32,
        "word_embed_proj_dim": 32,
        "num_hidden_layers": 2,
        "ffn_dim": 64,
        "num_attention_heads": 2,
        "max_position_embeddings": 128,
    },
    num_query_tokens=TINY_BLIP2_QUERY_TOKENS,
)


def caption_tokenizer(seed: int = 0) -> PreTrainedTokenizerFast:
    """The captioner's tokenizer: byte-level BPE trained on synthetic captions, `<image>` a special token."""
    captions = synthetic_captions(_CAPTIONS, seed=seed)
    return train_bpe_tokenizer(captions, _TOKENIZER_VOCAB, model_max_length=512)


def blip2_config(shapes: Blip2Shapes, tokenizer: PreTrainedTokenizerFast) -> Blip2Config:
    """The Blip2Config of `shapes`, with the tokenizer's special and `<image>` token ids."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    vocab = {"vocab_size": len(tokenizer)}
    vision = Blip2VisionConfig(**shapes.vision)
    qformer = Blip2QFormerConfig(**{**vocab, **shapes.qformer})
    text = OPTConfig(**{**vocab, **shapes.text}, **special_token_ids(tokenizer))
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=shapes.num_query_tokens,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
    )


def build_tiny_blip2(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny BLIP-2 folder (model, processor, tokenizer) to `out_dir` and return it."""
    return write_blip2(out_dir, TINY_BLIP2, caption_tokenizer(seed), seed)


def write_blip2(
    out_dir: Path,
    shapes: Blip2Shapes,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write a random BLIP-2 of `shapes` (weights drawn from `seed` on `device` in `dtype`) with its
    processor and `tokenizer` to `out_dir`, as `save_pretrained` writes a published one; return the folder."""
    from transformers import Blip2ForConditionalGeneration

    model = random_model(
        Blip2ForConditionalGeneration, blip2_config(shapes, tokenizer), seed, device=device, dtype=dtype
    )
    apply_generation_defaults(model, shapes)
    return save_blip2(out_dir, model, blip2_processor(shapes, tokenizer))


def apply_generation_defaults(model: Blip2ForConditionalGeneration, shapes: Blip2Shapes) -> None:
    """Set `shapes.generation` on the model's generation_config (saved with it as generation_config.json)."""
    for key, value in shapes.generation.items():
        setattr(model.generation_config, key, value)


def blip2_processor(shapes: Blip2Shapes, tokenizer: PreTrainedTokenizerFast) -> Blip2Processor:
    """The processor of a BLIP-2 of `shapes`: resize to the vision input size, CLIP normalisation, one
    `<image>` placeholder per query token before the text."""
    from transformers import Blip2Processor, BlipImageProcessor

    image_size = shapes.vision["image_size"]
    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    return Blip2Processor(image_processor, tokenizer, num_query_tokens=shapes.num_query_tokens)


def save_blip2(out_dir: Path, model: Blip2ForConditionalGeneration, processor: Blip2Processor) -> Path:
    """Save `model` (random or trained) and `processor` to `out_dir` as a published Salesforce/blip2-*
    folder is laid out, so the captioner's production loader reads it unchanged; return the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), max_shard_size=SHARD_SIZE)
    processor.save_pretrained(str(out_dir))
    return out_dir
