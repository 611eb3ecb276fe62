"""Contrastive image-caption training of an open_clip CLIP on CPU (the world's CLIP, issue 17).

The model is open_clip's own `CLIP` class built from an architecture config (the same dict a config dir's
`<name>.json` holds), the tokenizer is open_clip's CLIP BPE (context 77: `$` stays token 259), and images go
through the eval transform the saved model is loaded with, so what is trained is what the encoder serves.
Recipe: symmetric InfoNCE over the batch with CLIP's learnable logit scale (clamped at 100, as CLIP does),
AdamW without weight decay on gains/biases/embeddings, linear warmup then cosine decay, and one paraphrase
drawn at random per image per step. Everything is seeded and step-counted, so a run is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from cir_tools.packs.tiny_encoder import open_clip_preprocess_config, save_open_clip
from cir_tools.training.progress import Progress

# The world CLIP's name in its config dir (`<name>.json`), as `clip_model` names it.
WORLD_CLIP_NAME = "cir-world-clip"
# CLIP clamps its temperature here so that the logits cannot blow up.
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class ClipTrainingSettings:
    """Step budget and optimiser of `train_clip` (fixed step counts: the result does not depend on speed)."""

    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    seed: int = 0


def world_clip_config() -> dict[str, Any]:
    """The world CLIP's open_clip architecture: 64 px images in 8 px patches, 4-layer ViT and 3-layer text
    transformer, 128 wide, 64-dim joint space; the real vocabulary and context so the BPE tokenizer fits."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
    }


def clip_tokenizer(context_length: int = 77) -> Callable[..., torch.Tensor]:
    """open_clip's CLIP BPE tokenizer: what `load_clip` returns for a config without an HF tokenizer."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def eval_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The eval-time transform the saved model loads with (open_clip_config.json's preprocess_cfg)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    config = PreprocessCfg(size=(image_size, image_size), **open_clip_preprocess_config())
    return image_transform_v2(config, is_train=False)


def train_clip(
    model_config: dict[str, Any],
    pairs: Sequence[tuple[Image.Image, Sequence[str]]],
    settings: ClipTrainingSettings = ClipTrainingSettings(),
    progress: Progress | None = None,
) -> torch.nn.Module:
    """Train an open_clip CLIP of architecture `model_config` from scratch on (image, captions) pairs.

    Each step draws `batch_size` distinct images (without replacement within the step) and one of each
    image's captions. Returns the model in eval mode with gradients off, ready to save or encode.
    """
    from open_clip.model import CLIP

    if len(pairs) < 2:
        raise ValueError(f"contrastive training needs at least 2 image-caption pairs, got {len(pairs)}")
    if any(not captions for _, captions in pairs):
        raise ValueError("every image needs at least one caption")
    torch.manual_seed(settings.seed)
    model = CLIP(**model_config)
    transform = eval_transform(int(model_config["vision_cfg"]["image_size"]))
    tokenizer = clip_tokenizer(int(model_config["text_cfg"].get("context_length", 77)))
    # Images and captions are prepared once: the step loop only indexes tensors.
    pixels = torch.stack([transform(image.convert("RGB")) for image, _ in pairs])
    caption_ids, caption_owner = _tokenized_captions(tokenizer, [captions for _, captions in pairs])
    first_caption, caption_count = _caption_ranges(caption_owner, len(pairs))

    optimizer = torch.optim.AdamW(
        _parameter_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.98), eps=1e-6
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(settings.warmup_steps, settings.steps)
    )
    generator = torch.Generator().manual_seed(settings.seed)
    batch_size = min(settings.batch_size, len(pairs))
    model.train()
    for step in range(settings.steps):
        images = torch.randperm(len(pairs), generator=generator)[:batch_size]
        draw = torch.rand(batch_size, generator=generator)
        captions = first_caption[images] + (draw * caption_count[images]).long()
        loss = contrastive_loss(model, pixels[images], caption_ids[captions])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        if progress is not None:
            progress(step + 1, settings.steps, float(loss.detach()))
    model.eval()
    model.requires_grad_(False)
    return model


def contrastive_loss(model: torch.nn.Module, pixels: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy: row i's image and caption are positives, the rest of the batch not."""
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(model.encode_text(token_ids), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear from ~0 to 1 over `warmup_steps`, then a cosine down to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))

    return factor


def save_clip(model: torch.nn.Module, clip_dir: Path, model_config: dict[str, Any], name: str) -> Path:
    """Save a trained CLIP in the tiny pack's layout (config dir + local-dir + safetensors); returns the
    checkpoint, which `clip_model=name, clip_pretrained=checkpoint, clip_config_dir=clip_dir` loads."""
    return save_open_clip(model, clip_dir, name, model_config)


@torch.no_grad()
def retrieval_recall_at_1(
    model: torch.nn.Module,
    tokenizer: Callable[..., torch.Tensor],
    transform: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
    captions: Sequence[str],
) -> tuple[float, float]:
    """(image->text, text->image) recall@1 where image i's only match is caption i.

    A caption shared by several images (two renderings of one scene) counts as a hit for any of them.
    """
    image_features = F.normalize(model.encode_image(torch.stack([transform(i) for i in images])), dim=-1)
    text_features = F.normalize(model.encode_text(tokenizer(list(captions))), dim=-1)
    similarity = image_features @ text_features.T
    same_text = torch.tensor([[a == b for b in captions] for a in captions])
    image_to_text = same_text[torch.arange(len(captions)), similarity.argmax(dim=1)].float().mean()
    text_to_image = same_text[similarity.argmax(dim=0), torch.arange(len(captions))].float().mean()
    return float(image_to_text), float(text_to_image)


def _tokenized_captions(
    tokenizer: Callable[..., torch.Tensor], captions_per_image: Sequence[Sequence[str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    flat = [caption for captions in captions_per_image for caption in captions]
    owner = torch.tensor([index for index, captions in enumerate(captions_per_image) for _ in captions])
    return tokenizer(flat), owner


def _caption_ranges(owner: torch.Tensor, image_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Captions are stored image by image, so image i's captions are one contiguous run.
    count = torch.bincount(owner, minlength=image_count)
    first = torch.cumsum(count, dim=0) - count
    return first, count


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # As in CLIP: no decay on gains, biases, embeddings and the temperature (1-d tensors and embeddings).
    decayed, exempt = [], []
    for name, parameter in model.named_parameters():
        no_decay = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
        (exempt if no_decay else decayed).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
