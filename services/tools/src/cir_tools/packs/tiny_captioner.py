"""The captioner's part of the tiny model pack: a random BLIP-2 (ViT + Q-Former + OPT, all 32 wide).

Saved with `save_pretrained` next to its processor, so `load_blip2` reads it exactly as a real
Salesforce/blip2-* folder. The tokenizer is trained on synthetic captions (no tokenizer can be downloaded).
"""

from __future__ import annotations

from pathlib import Path

from cir_tools.packs.common import CLIP_MEAN, CLIP_STD, random_model, special_token_ids
from cir_tools.packs.tokenizer import IMAGE, synthetic_captions, train_bpe_tokenizer

TINY_BLIP2_IMAGE_SIZE = 32
TINY_BLIP2_QUERY_TOKENS = 8
_TOKENIZER_VOCAB = 1000
_CAPTIONS = 2000


def build_tiny_blip2(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny BLIP-2 folder (model, processor, tokenizer) to `out_dir` and return it."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_bpe_tokenizer(
        synthetic_captions(_CAPTIONS, seed=seed), _TOKENIZER_VOCAB, model_max_length=512
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)

    vision = Blip2VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TINY_BLIP2_IMAGE_SIZE,
        patch_size=8,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        encoder_hidden_size=32,
    )
    text = OPTConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        word_embed_proj_dim=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=2,
        max_position_embeddings=128,
        **special_token_ids(tokenizer),
    )
    config = Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=TINY_BLIP2_QUERY_TOKENS,
        image_token_index=image_token_id,
    )
    model = random_model(Blip2ForConditionalGeneration, config, seed)
    # A random OPT rarely emits EOS; cap new tokens so `generate` with defaults stays short.
    model.generation_config.max_new_tokens = 20
    model.save_pretrained(str(out_dir))

    image_processor = BlipImageProcessor(
        size={"height": TINY_BLIP2_IMAGE_SIZE, "width": TINY_BLIP2_IMAGE_SIZE},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=TINY_BLIP2_QUERY_TOKENS)
    processor.save_pretrained(str(out_dir))
    return out_dir
