"""The CVSI paper's models at their published sizes, as data, and builders of random-weight models of those
shapes in the real on-disk formats (bench/gpu_paper_profile.py serves and times them on a GPU).

- CLIP ViT-L/14: open_clip's bundled `ViT-L-14` config; published 427.6 M parameters.
- Phi (LinCIR): 768 -> 3072 -> 3072 -> 768; 14.16 M.
- BLIP-2 OPT-6.7b COCO: ViT-g (39 layers of 1408, 364 px, patch 14), Q-Former (12 layers of 768, 32 queries,
  cross-attention every 2nd layer), OPT-6.7b (32 layers of 4096, FFN 16384, vocabulary 50272); 7.75 B.
- The 7 B instruct LLM as Qwen2.5-7B-Instruct (Qwen2, a Llama-family decoder): 28 layers of 3584, FFN 18944,
  28 query / 4 key-value heads, vocabulary 152064, rope theta 1e6; 7.61 B.

No tokenizer can be downloaded: the tokenizers are the tiny pack's, trained on the spot, and padded with
filler words (`tokenizer.pad_vocabulary`) to the real vocabulary sizes, so that every embedding and output
matrix has its real shape and every id a random model emits decodes to a word. `TINY` runs the same flow at
the tiny pack's layer sizes (with the real vocabularies) on a CPU. Weights are drawn on the build's device
in half precision (fp16; bf16 for the LLM, as published) and written as `save_pretrained` / open_clip write
them; on torch's "meta" device only the shapes are made (`parameter_counts`: nothing is allocated).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cir_tools.packs.tiny_captioner import TINY_BLIP2, Blip2Shapes

if TYPE_CHECKING:
    from transformers import Blip2Config, PreTrainedTokenizerFast, Qwen2Config

# The models counted, and the parts of BLIP-2 reported on their own.
MODELS = ("clip", "phi", "blip2", "llm")
BLIP2_PARTS = ("vision_model", "qformer", "language_projection", "language_model")
# The services whose models are built, one process each.
PARTS = ("encoder", "captioner", "reasoner")
# Published parameter counts are rounded to 3-4 digits; a shape that is off by a layer misses by far more.
TOLERANCE = 0.01


def _bundled_clip_config(name: str) -> dict[str, Any]:
    import open_clip

    config = open_clip.get_model_config(name)
    if config is None:
        raise ValueError(f"open_clip bundles no config named {name!r}")
    return dict(config)


def _tiny_clip_config() -> dict[str, Any]:
    from cir_tools.packs.tiny_encoder import tiny_clip_config

    return tiny_clip_config()


@dataclass(frozen=True)
class Shapes:
    name: str
    clip_model: str  # the open_clip architecture name the profile gives the encoder
    clip_config: Callable[[], dict[str, Any]]
    # open_clip ships the config: the profile names the architecture alone (no clip_config_dir).
    clip_bundled: bool
    blip2: Blip2Shapes
    llm: dict[str, Any]  # Qwen2Config keyword arguments (vocab_size: the padded tokenizer's)
    # Real vocabulary sizes the trained tokenizers are padded to.
    caption_vocab: int
    llm_vocab: int
    # Parameters by model (MODELS) as published; empty: nothing to compare with.
    published: dict[str, float] = field(default_factory=dict)


BLIP2_OPT_6_7B_COCO = Blip2Shapes(
    vision={
        "hidden_size": 1408,
        "intermediate_size": 6144,
        "num_hidden_layers": 39,
        "num_attention_heads": 16,
        "image_size": 364,  # the COCO-finetuned checkpoints' (method.md 2.3)
        "patch_size": 14,
        "qkv_bias": True,
        "layer_norm_eps": 1e-5,
    },
    qformer={
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "encoder_hidden_size": 1408,
        "cross_attention_frequency": 2,
    },
    text={
        "hidden_size": 4096,
        "word_embed_proj_dim": 4096,
        "num_hidden_layers": 32,
        "ffn_dim": 16384,
        "num_attention_heads": 32,
        "max_position_embeddings": 2048,
        "do_layer_norm_before": True,
        "activation_function": "relu",
    },
    num_query_tokens=32,
)

QWEN2_5_7B = {
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1_000_000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
}

PAPER = Shapes(
    name="paper",
    clip_model="ViT-L-14",
    clip_config=lambda: _bundled_clip_config("ViT-L-14"),
    clip_bundled=True,
    blip2=BLIP2_OPT_6_7B_COCO,
    llm=QWEN2_5_7B,
    caption_vocab=50272,
    llm_vocab=152064,
    published={
        "clip": 427.6e6,  # open_clip's model table, ViT-L-14 (OpenAI's weights)
        "phi": 14.16e6,  # LinCIR's Phi for ViT-L/14 (method.md 2.1)
        "blip2": 7.75e9,  # Salesforce/blip2-opt-6.7b-coco on the Hugging Face hub
        "llm": 7.61e9,  # Qwen2.5-7B-Instruct's model card
    },
)

TINY = Shapes(
    name="tiny",
    clip_model="cir-tiny-clip",
    clip_config=_tiny_clip_config,
    clip_bundled=False,
    blip2=TINY_BLIP2,
    # head_dim 32: vLLM's CPU attention rejects 16 on AVX2; 8192 positions for the real prompts.
    llm={
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
    },
    # The real vocabularies: the CPU run takes the padded tokenizers' path too.
    caption_vocab=50272,
    llm_vocab=152064,
)

SHAPES = {shapes.name: shapes for shapes in (PAPER, TINY)}


@dataclass(frozen=True)
class Configs:
    """Every model's configuration, made exactly as the builders make them (tokenizers trained and padded)."""

    clip: dict[str, Any]
    phi: tuple[int, int]  # (CLIP embedding dim, text width): Phi's input and output
    blip2: Blip2Config
    llm: Qwen2Config
    caption_tokenizer: PreTrainedTokenizerFast
    llm_tokenizer: PreTrainedTokenizerFast


def phi_dims(clip_config: dict[str, Any]) -> tuple[int, int]:
    return int(clip_config["embed_dim"]), int(clip_config["text_cfg"]["width"])


def caption_tokenizer(shapes: Shapes, seed: int = 0) -> PreTrainedTokenizerFast:
    from cir_tools.packs import tiny_captioner
    from cir_tools.packs.tokenizer import pad_vocabulary

    return pad_vocabulary(tiny_captioner.caption_tokenizer(seed), shapes.caption_vocab)


def llm_tokenizer(shapes: Shapes, seed: int = 0) -> PreTrainedTokenizerFast:
    from cir_tools.packs import tiny_reasoner
    from cir_tools.packs.tokenizer import pad_vocabulary

    return pad_vocabulary(tiny_reasoner.llm_tokenizer(seed), shapes.llm_vocab)


def llm_config(shapes: Shapes, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    from transformers import Qwen2Config

    from cir_tools.packs.common import special_token_ids

    return Qwen2Config(vocab_size=len(tokenizer), **shapes.llm, **special_token_ids(tokenizer))


def model_configs(shapes: Shapes, seed: int = 0) -> Configs:
    from cir_tools.packs.tiny_captioner import blip2_config

    clip = shapes.clip_config()
    captions = caption_tokenizer(shapes, seed)
    llm = llm_tokenizer(shapes, seed)
    return Configs(
        clip=clip,
        phi=phi_dims(clip),
        blip2=blip2_config(shapes.blip2, captions),
        llm=llm_config(shapes, llm),
        caption_tokenizer=captions,
        llm_tokenizer=llm,
    )


def parameter_counts(shapes: Shapes, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each model of `shapes` made on torch's meta device (shapes only: no memory) and counted.

    Per model: `parameters`; where published: `published`, `relative_error` and `within_tolerance`
    (TOLERANCE); BLIP-2 adds its `parts`; the LLM and BLIP-2 their `vocab_size` (the padded tokenizer's).
    """
    import torch
    from open_clip.model import CLIP
    from transformers import Blip2ForConditionalGeneration, Qwen2ForCausalLM

    from cir_encoder.phi import Phi
    from cir_tools.packs.common import random_model

    configs = model_configs(shapes, seed)
    meta = {"seed": seed, "device": "meta"}
    models: dict[str, torch.nn.Module] = {
        "clip": random_model(lambda config: CLIP(**config), configs.clip, **meta),
        "phi": random_model(lambda dims: Phi(*dims), configs.phi, **meta),
        "blip2": random_model(Blip2ForConditionalGeneration, configs.blip2, **meta),
        "llm": random_model(Qwen2ForCausalLM, configs.llm, **meta),
    }
    counts: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        entry: dict[str, Any] = {"parameters": _count(model)}
        if all(p.is_meta for p in model.parameters()):
            entry["allocated_bytes"] = 0
        published = shapes.published.get(name)
        if published:
            error = entry["parameters"] / published - 1.0
            entry.update(
                published=published,
                relative_error=round(error, 5),
                within_tolerance=abs(error) <= TOLERANCE,
            )
        counts[name] = entry
    blip2 = models["blip2"]
    parts = {part: _count(getattr(blip2, part)) for part in BLIP2_PARTS}
    parts["qformer"] += blip2.query_tokens.numel()
    counts["blip2"]["parts"] = parts
    counts["blip2"]["vocab_size"] = configs.blip2.text_config.vocab_size
    counts["llm"]["vocab_size"] = configs.llm.vocab_size
    counts["clip"]["architecture"] = shapes.clip_model
    counts["phi"]["dims"] = [configs.phi[0], 4 * configs.phi[0], 4 * configs.phi[0], configs.phi[1]]
    return counts


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


@dataclass(frozen=True)
class BuiltPart:
    """What one service's build wrote: the paths the profile points at, and how long it took."""

    part: str
    files: dict[str, str]
    seconds: float
    bytes_on_disk: int


def build_part(part: str, out_dir: Path, shapes_name: str, device: str = "cpu", seed: int = 0) -> BuiltPart:
    """Write one service's models of SHAPES[shapes_name] under `out_dir/<part>`.

    Meant for one process per part (they run in parallel and give their GPU memory back when they exit).
    On a GPU the weights are drawn there in half precision; on the CPU in float32, as the tiny pack does.
    """
    import torch

    from cir_tools.packs.tiny_captioner import write_blip2
    from cir_tools.packs.tiny_encoder import write_open_clip, write_phi
    from cir_tools.packs.tiny_reasoner import write_causal_lm

    shapes = SHAPES[shapes_name]
    on_gpu = device != "cpu"
    started = time.perf_counter()
    folder = out_dir / part
    if part == "encoder":
        config = shapes.clip_config()
        clip_dir = folder / "clip"
        half = torch.float16 if on_gpu else None
        checkpoint = write_open_clip(clip_dir, shapes.clip_model, config, seed, device=device, dtype=half)
        phi = write_phi(folder / "phi" / "phi-lincir.pt", *phi_dims(config))
        files = {"clip_pretrained": str(checkpoint), "clip_config_dir": str(clip_dir), "lincir": str(phi)}
    elif part == "captioner":
        tokenizer = caption_tokenizer(shapes, seed)
        half = torch.float16 if on_gpu else None
        model = write_blip2(folder / "blip2", shapes.blip2, tokenizer, seed, device=device, dtype=half)
        files = {"model": str(model)}
    elif part == "reasoner":
        from transformers import Qwen2ForCausalLM

        tokenizer = llm_tokenizer(shapes, seed)
        half = torch.bfloat16 if on_gpu else None
        config = llm_config(shapes, tokenizer)
        model = write_causal_lm(
            folder / "llm", Qwen2ForCausalLM, config, tokenizer, seed, device=device, init_dtype=half
        )
        files = {"model": str(model)}
    else:
        raise ValueError(f"unknown part {part!r}; one of {', '.join(PARTS)}")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return BuiltPart(part, files, round(time.perf_counter() - started, 1), size)
