"""Pseudo-token injection into the CLIP text encoder (method.md 2.2).

The prompt is tokenised as usual; at every placeholder position the token embedding is
replaced by Phi's output, then the text transformer runs unchanged and pools at the EOT
position. With the placeholder's own embedding injected this is exactly `encode_text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from open_clip.transformer import text_global_pool

from cir_common.errors import ConfigError


@dataclass(frozen=True)
class TextTower:
    """The parts of an open_clip text encoder the injection needs, wherever the model keeps them."""

    token_embedding: torch.nn.Embedding
    positional_embedding: torch.Tensor
    transformer: Any
    ln_final: torch.nn.Module
    text_projection: torch.nn.Module | torch.Tensor | None
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_token_id: int | None


def text_tower(model: torch.nn.Module) -> TextTower:
    """Finds the text encoder of a CLIP (attributes on the model) or CustomTextCLIP (model.text)."""
    holder = getattr(model, "text", model)
    pool_type = getattr(holder, "text_pool_type", None) or getattr(holder, "pool_type", None)
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if pool_type is None or not all(hasattr(holder, name) for name in needed):
        raise ConfigError(
            f"{type(model).__name__} has no token-embedding text tower: pseudo-token prompts need a "
            "CLIP-style text transformer (open_clip CLIP or CustomTextCLIP with a TextTransformer)"
        )
    if getattr(holder, "cls_emb", None) is not None:
        raise ConfigError("text towers with a CLS embedding are not supported for pseudo-token prompts")
    return TextTower(
        token_embedding=holder.token_embedding,
        positional_embedding=holder.positional_embedding,
        transformer=holder.transformer,
        ln_final=holder.ln_final,
        text_projection=getattr(holder, "text_projection", None),
        attn_mask=getattr(holder, "attn_mask", None),
        pool_type=pool_type,
        eos_token_id=getattr(holder, "text_eos_id", None) or getattr(holder, "eos_id", None),
    )


def encode_with_pseudo_tokens(
    tower: TextTower, token_ids: torch.Tensor, pseudo_tokens: torch.Tensor, placeholder_id: int
) -> torch.Tensor:
    """Text features (B, D), unnormalised, with row b's placeholders replaced by pseudo_tokens[b].

    Every placeholder occurrence is replaced (LinCIR); with a single `$` this equals SEARLE's
    first-occurrence rule.
    """
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(token_ids).to(cast_dtype)
    is_placeholder = (token_ids == placeholder_id).unsqueeze(-1)
    x = torch.where(is_placeholder, pseudo_tokens.to(cast_dtype).unsqueeze(1).expand_as(x), x)
    x = x + tower.positional_embedding.to(cast_dtype)
    x = tower.transformer(x, attn_mask=tower.attn_mask)
    x = tower.ln_final(x)
    x = text_global_pool(x, token_ids, tower.pool_type, eos_token_id=tower.eos_token_id)
    if tower.text_projection is None:
        return x
    if isinstance(tower.text_projection, torch.nn.Linear):
        return tower.text_projection(x)
    return x @ tower.text_projection
