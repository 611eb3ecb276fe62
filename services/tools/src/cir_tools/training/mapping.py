"""Image-side mapping networks for a frozen open_clip CLIP: Pic2Word's mapping and a SEARLE-shaped Phi.

Both learn from image embeddings (raw, projected, as the encoder feeds its mapping networks), computed once.
- Pic2Word: `Pic2WordMapping(f_v(I))` is the pseudo token of "a photo of $"; the text features of that prompt
  and the image embeddings of the batch are contrasted (symmetric InfoNCE after L2 normalisation, at the
  CLIP model's own temperature), so the pseudo word must pick its image out of the batch.
- SEARLE (simplified, cheap): Phi is trained image-side with a cosine loss between `f_t("a photo of $")`
  and `f_v(I)`, plus a regulariser toward caption text embeddings: the pseudo word placed in the image's own
  caption (keywords replaced by `$`, as LinCIR's prompts) must reproduce that caption's embedding. SEARLE's
  regulariser does this with GPT-written phrases around a concept word; the world's captions are those
  phrases here. SEARLE's first stage (optimisation-based textual inversion per image, then distillation) is
  skipped: distilling straight from the objective costs one training run instead of two.
Pseudo tokens go through the encoder's `encode_with_pseudo_tokens` (one implementation for training and
serving); both networks save in their publishers' formats (`packs.tiny_encoder.save_pic2word` / `save_phi`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from cir_encoder.phi import Phi, Pic2WordMapping
from cir_encoder.pseudo_tokens import text_tower
from cir_tools.training.clip import warmup_cosine
from cir_tools.training.phi import (
    TEMPLATE_PROMPT,
    Tokenizer,
    embed_texts,
    frozen,
    keyword_prompt,
    placeholder_token_id,
    searle_loss,
    tower_features,
)
from cir_tools.training.progress import Progress


@dataclass(frozen=True)
class MappingTrainingSettings:
    """Step budget and optimiser of the image-side trainers; `hidden_dim`/`num_blocks` shape Pic2Word's."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    searle_regularizer_weight: float = 0.5
    hidden_dim: int = 256
    num_blocks: int = 2
    seed: int = 0


@torch.no_grad()
def embed_images(
    clip_model: torch.nn.Module,
    transform: Callable[[Image.Image], torch.Tensor],
    images: Sequence[Image.Image],
) -> torch.Tensor:
    """Raw (unnormalised) projected CLIP image embeddings, in batches."""
    was_training = clip_model.training
    clip_model.eval()
    chunks = [
        clip_model.encode_image(
            torch.stack([transform(image.convert("RGB")) for image in images[i : i + 256]])
        )
        for i in range(0, len(images), 256)
    ]
    clip_model.train(was_training)
    return torch.cat(chunks).float()


def train_pic2word(
    clip_model: torch.nn.Module,
    tokenizer: Tokenizer,
    image_embeddings: torch.Tensor,
    settings: MappingTrainingSettings = MappingTrainingSettings(),
    progress: Progress | None = None,
) -> Pic2WordMapping:
    """Pic2Word's recipe (module docstring) on precomputed image embeddings; eval mode on return."""
    _check_batchable(image_embeddings)
    with frozen(clip_model):
        tower = text_tower(clip_model)
        placeholder = placeholder_token_id(tokenizer)
        prompt_ids = tokenizer([TEMPLATE_PROMPT])
        logit_scale = float(clip_model.logit_scale.exp())
        torch.manual_seed(settings.seed)
        mapping = Pic2WordMapping(
            image_embeddings.shape[1],
            tower.token_embedding.embedding_dim,
            hidden_dim=settings.hidden_dim,
            num_blocks=settings.num_blocks,
        )

        def loss_of(rows: torch.Tensor) -> torch.Tensor:
            images = image_embeddings[rows]
            text = tower_features(tower, prompt_ids.expand(len(rows), -1), mapping(images), placeholder)
            logits = logit_scale * F.normalize(text, dim=-1) @ F.normalize(images, dim=-1).T
            labels = torch.arange(len(rows))
            return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

        _fit(mapping, loss_of, len(image_embeddings), settings, progress)
    return mapping


def train_searle(
    clip_model: torch.nn.Module,
    tokenizer: Tokenizer,
    image_embeddings: torch.Tensor,
    captions: Sequence[str],
    settings: MappingTrainingSettings = MappingTrainingSettings(),
    progress: Progress | None = None,
) -> Phi:
    """The SEARLE-shaped Phi trained image-side (module docstring); `captions[i]` describes image i."""
    _check_batchable(image_embeddings)
    if len(captions) != len(image_embeddings):
        raise ValueError(f"{len(captions)} captions for {len(image_embeddings)} image embeddings")
    with frozen(clip_model):
        tower = text_tower(clip_model)
        placeholder = placeholder_token_id(tokenizer)
        template_ids = tokenizer([TEMPLATE_PROMPT])
        context_ids = tokenizer([keyword_prompt(caption) for caption in captions])
        caption_targets = embed_texts(clip_model, tokenizer, captions)
        torch.manual_seed(settings.seed)
        phi = Phi(image_embeddings.shape[1], tower.token_embedding.embedding_dim)

        def loss_of(rows: torch.Tensor) -> torch.Tensor:
            images = image_embeddings[rows]
            return searle_loss(
                tower,
                placeholder,
                phi(images),
                template_ids,
                images,
                context_ids[rows],
                caption_targets[rows],
                settings.searle_regularizer_weight,
            )

        _fit(phi, loss_of, len(image_embeddings), settings, progress)
    return phi


def _fit(
    network: torch.nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    count: int,
    settings: MappingTrainingSettings,
    progress: Progress | None,
) -> None:
    optimizer = torch.optim.AdamW(network.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(settings.warmup_steps, settings.steps)
    )
    generator = torch.Generator().manual_seed(settings.seed)
    batch_size = min(settings.batch_size, count)
    network.train()
    for step in range(settings.steps):
        loss = loss_of(torch.randperm(count, generator=generator)[:batch_size])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, settings.steps, float(loss.detach()))
    network.eval()
    network.requires_grad_(False)


def _check_batchable(image_embeddings: torch.Tensor) -> None:
    if image_embeddings.ndim != 2 or len(image_embeddings) < 2:
        raise ValueError(
            "image-side training needs at least 2 image embeddings (N, dim), "
            f"got {tuple(image_embeddings.shape)}"
        )
