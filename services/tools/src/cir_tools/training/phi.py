"""Phi, the mapping network, trained from text only (LinCIR's recipe, method.md 2.1) on any open_clip CLIP.

LinCIR: a caption's CLIP text embedding `x` (projected, not L2-normalised), plus Gaussian noise scaled by a
random factor per row (`rand(B,1) * randn(B,d)`), goes through Phi; the predicted token replaces the
placeholder `$` of a prompt, the frozen text encoder encodes the prompt, and the loss is the MSE between that
and the clean `x`. The noise is what lets a network that only ever saw text embeddings take image embeddings
at inference (the modality gap). Two choices, both settings:
- the noise is in units of the corpus's RMS embedding coordinate (`noise_std`), because the raw scale of a
  CLIP embedding differs per backbone (LinCIR's 1.0 was absolute, for its backbones);
- the prompts are those of LinCIR's loader: the caption with each keyword run (adjectives/nouns with their
  determiner; here: each run of non-function words, as no POS tagger is installed) replaced by `$`, or the
  template "a photo of $" (LinCIR's fallback, and the form the strategies query with); `template_fraction`
  of the rows use the template.

`network="searle"` trains the SEARLE-shaped network from the same text-only inputs with SEARLE's kind of
objective instead: a cosine loss between the template prompt's features and the target embedding, plus a
regulariser (weight `searle_regularizer_weight`) asking the pseudo word to also reproduce the caption inside
the caption's own context (the keyword prompt). SEARLE's regulariser does this with GPT-written phrases around
a concept word; the corpus's own captions are those phrases here. Why text-only: the command line trains from
a text file on any backbone; `cir_tools.training.mapping.train_searle` is the image-side variant.

The CLIP model stays frozen; pseudo tokens are injected by the encoder's own `encode_with_pseudo_tokens`, so
training and serving share one implementation. Saved as LinCIR publishes (`{"Phi": state_dict}`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from cir_encoder.engine import PLACEHOLDER
from cir_encoder.phi import Phi
from cir_encoder.pseudo_tokens import TextTower, encode_with_pseudo_tokens, text_tower
from cir_tools.training.clip import warmup_cosine
from cir_tools.training.progress import Progress

PhiNetwork = Literal["lincir", "searle"]
NETWORKS: tuple[str, ...] = ("lincir", "searle")
TEMPLATE_PROMPT = f"a photo of {PLACEHOLDER}"
Tokenizer = Callable[..., torch.Tensor]

# Words that never start or belong to a keyword run (prepositions, conjunctions, verbs of being, ...).
# Determiners are kept out of this list: LinCIR's keyword runs include them ("a large red circle").
_FUNCTION_WORDS = frozenset(
    [
        "on",
        "in",
        "at",
        "of",
        "to",
        "with",
        "without",
        "and",
        "or",
        "but",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "that",
        "which",
        "who",
        "whose",
        "while",
        "from",
        "by",
        "for",
        "into",
        "onto",
        "over",
        "under",
        "above",
        "below",
        "behind",
        "beside",
        "between",
        "near",
        "next",
        "than",
        "then",
        "there",
        "here",
        "against",
        "it",
        "its",
        "this",
        "these",
        "those",
        "has",
        "have",
        "having",
        "as",
        "so",
        "not",
        "no",
        "nor",
        "very",
        "also",
    ]
)


@dataclass(frozen=True)
class PhiTrainingSettings:
    """Step budget, optimiser and LinCIR's knobs of `train_phi`."""

    steps: int = 400
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    noise_std: float = 1.0
    template_fraction: float = 0.5
    searle_regularizer_weight: float = 0.5
    seed: int = 0


def keyword_prompt(caption: str) -> str:
    """LinCIR's prompt from a caption: every keyword run replaced by `$`; the template when none is found."""
    words = caption.replace(PLACEHOLDER, " ").split()
    pieces: list[str] = []
    for word in words:
        if word.lower() in _FUNCTION_WORDS:
            pieces.append(word)
        elif not pieces or pieces[-1] != PLACEHOLDER:
            pieces.append(PLACEHOLDER)
    return " ".join(pieces) if PLACEHOLDER in pieces else TEMPLATE_PROMPT


def placeholder_token_id(tokenizer: Tokenizer) -> int:
    """The id of `$` as one word (259 in the CLIP vocabulary); refuses a tokenizer that splits it."""
    ids = [int(i) for i in tokenizer([PLACEHOLDER])[0].tolist()]
    body = [i for i in ids[1:] if i != 0][:-1]  # between start and end of text, padding dropped
    if len(body) != 1:
        raise ValueError(f"the tokenizer splits the placeholder {PLACEHOLDER!r} into {len(body)} tokens")
    return body[0]


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode with no parameter gradients for the duration; its flags are restored after."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    was_training = model.training
    model.eval()
    model.requires_grad_(False)
    try:
        yield model
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)
        model.train(was_training)


@torch.no_grad()
def embed_texts(clip_model: torch.nn.Module, tokenizer: Tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Raw (unnormalised) projected CLIP text embeddings, in batches."""
    chunks = [clip_model.encode_text(tokenizer(list(texts[i : i + 256]))) for i in range(0, len(texts), 256)]
    return torch.cat(chunks).float()


def train_phi(
    clip_model: torch.nn.Module,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    settings: PhiTrainingSettings = PhiTrainingSettings(),
    network: PhiNetwork = "lincir",
    progress: Progress | None = None,
) -> Phi:
    """Train a Phi for the frozen `clip_model` from `texts` alone (module docstring); eval mode on return."""
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; use one of {', '.join(NETWORKS)}")
    texts = [text.strip() for text in texts if text.strip()]
    if len(texts) < 2:
        raise ValueError(f"training Phi needs at least 2 non-empty texts, got {len(texts)}")
    with frozen(clip_model):
        tower = text_tower(clip_model)
        placeholder = placeholder_token_id(tokenizer)
        targets = embed_texts(clip_model, tokenizer, texts)
        template_ids = tokenizer([TEMPLATE_PROMPT])
        context_ids = tokenizer([keyword_prompt(text) for text in texts])
        noise_unit = targets.pow(2).mean().sqrt()

        torch.manual_seed(settings.seed)
        phi = Phi(targets.shape[1], tower.token_embedding.embedding_dim)
        optimizer = torch.optim.AdamW(phi.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(settings.warmup_steps, settings.steps)
        )
        generator = torch.Generator().manual_seed(settings.seed)
        batch_size = min(settings.batch_size, len(texts))
        phi.train()
        for step in range(settings.steps):
            rows = torch.randperm(len(texts), generator=generator)[:batch_size]
            clean = targets[rows]
            scale = torch.rand(batch_size, 1, generator=generator)
            noise = scale * torch.randn(clean.shape, generator=generator)
            tokens = phi(clean + settings.noise_std * noise_unit * noise)
            use_template = torch.rand(batch_size, generator=generator) < settings.template_fraction
            if network == "lincir":
                prompts = torch.where(use_template.unsqueeze(1), template_ids, context_ids[rows])
                loss = F.mse_loss(encode_with_pseudo_tokens(tower, prompts, tokens, placeholder), clean)
            else:
                loss = searle_loss(
                    tower,
                    placeholder,
                    tokens,
                    template_ids,
                    clean,
                    context_ids[rows],
                    clean,
                    settings.searle_regularizer_weight,
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if progress is not None:
                progress(step + 1, settings.steps, float(loss.detach()))
    phi.eval()
    phi.requires_grad_(False)
    return phi


def searle_loss(
    tower: TextTower,
    placeholder: int,
    tokens: torch.Tensor,
    template_ids: torch.Tensor,
    target: torch.Tensor,
    context_ids: torch.Tensor,
    context_target: torch.Tensor,
    regularizer_weight: float,
) -> torch.Tensor:
    """SEARLE-shaped objective: `1 - cos("a photo of $", target) + w * (1 - cos($ in context, target'))`."""
    template = tower_features(tower, template_ids.expand(len(tokens), -1), tokens, placeholder)
    context = tower_features(tower, context_ids, tokens, placeholder)
    main = 1 - F.cosine_similarity(template, target, dim=-1).mean()
    regulariser = 1 - F.cosine_similarity(context, context_target, dim=-1).mean()
    return main + regularizer_weight * regulariser


def tower_features(
    tower: TextTower, token_ids: torch.Tensor, tokens: torch.Tensor, placeholder: int
) -> torch.Tensor:
    """The production injection (`cir_encoder.pseudo_tokens`), named for the losses here."""
    return encode_with_pseudo_tokens(tower, token_ids, tokens, placeholder)


@torch.no_grad()
def pseudo_word_recall_at_1(
    clip_model: torch.nn.Module,
    tokenizer: Tokenizer,
    mapping: torch.nn.Module,
    image_embeddings: torch.Tensor,
    captions: Sequence[str],
    prompt: str = TEMPLATE_PROMPT,
) -> float:
    """How often `f_t(prompt, $ = mapping(f_v(I)))` is closest to image I's own caption among all captions
    (a caption shared by several images counts for any of them)."""
    tower = text_tower(clip_model)
    ids = tokenizer([prompt] * len(captions))
    queries = F.normalize(
        encode_with_pseudo_tokens(tower, ids, mapping(image_embeddings), placeholder_token_id(tokenizer)),
        dim=-1,
    )
    keys = F.normalize(embed_texts(clip_model, tokenizer, captions), dim=-1)
    best = (queries @ keys.T).argmax(dim=1).tolist()
    return sum(captions[b] == captions[i] for i, b in enumerate(best)) / len(captions)
