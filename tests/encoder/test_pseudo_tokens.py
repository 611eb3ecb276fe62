"""Pseudo-token injection (method.md 2.2) against plain encode_text."""

from __future__ import annotations

import torch

from cir_encoder.pseudo_tokens import encode_with_pseudo_tokens, text_tower

PLACEHOLDER_ID = 259


def test_placeholder_is_token_259(tiny_clip):
    ids = tiny_clip.tokenizer(["a photo of $ that is red"])[0].tolist()
    assert PLACEHOLDER_ID in ids
    assert ids[0] == 49406 and 49407 in ids


def test_injecting_the_placeholders_own_embedding_reproduces_encode_text(tiny_clip):
    model = tiny_clip.model
    ids = tiny_clip.tokenizer(["a photo of $ that is red", "$ and $ again", "no placeholder here"])
    own = model.token_embedding.weight[PLACEHOLDER_ID].detach().expand(ids.shape[0], -1)
    with torch.inference_mode():
        injected = encode_with_pseudo_tokens(text_tower(model), ids, own, PLACEHOLDER_ID)
        plain = model.encode_text(ids)
    assert (injected - plain).abs().max().item() < 1e-5


def test_every_placeholder_is_replaced_and_nothing_else(tiny_clip):
    model = tiny_clip.model
    tower = text_tower(model)
    token = torch.randn(1, tiny_clip.text_width)
    with torch.inference_mode():
        one = encode_with_pseudo_tokens(tower, tiny_clip.tokenizer(["a $ b"]), token, PLACEHOLDER_ID)
        two = encode_with_pseudo_tokens(tower, tiny_clip.tokenizer(["a $ b $"]), token, PLACEHOLDER_ID)
        without = encode_with_pseudo_tokens(tower, tiny_clip.tokenizer(["a b"]), token, PLACEHOLDER_ID)
        plain_without = model.encode_text(tiny_clip.tokenizer(["a b"]))
    assert (one - two).abs().max().item() > 1e-4  # the second `$` was replaced too, so the text differs
    assert (without - plain_without).abs().max().item() < 1e-5  # no `$`: the token has no effect


def test_direct_computation_matches(tiny_clip):
    """The injected forward pass written out by hand, step by step."""
    model = tiny_clip.model
    ids = tiny_clip.tokenizer(["a photo of $ that is red"])
    token = torch.randn(tiny_clip.text_width)
    with torch.inference_mode():
        x = model.token_embedding(ids).clone()
        position = (ids[0] == PLACEHOLDER_ID).nonzero()[0, 0]
        x[0, position] = token
        x = x + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        pooled = x[0, ids[0].argmax()]
        expected = pooled @ model.text_projection
        got = encode_with_pseudo_tokens(text_tower(model), ids, token[None], PLACEHOLDER_ID)[0]
    assert (got - expected).abs().max().item() < 1e-5
