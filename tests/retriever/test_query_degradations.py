"""The words a degradation is listed with, and the least a strategy costs (what the admission check sums)."""

from __future__ import annotations

from cir_retriever.options import VariantChoices, WeightOverrides, resolve_options
from cir_retriever.presets import Preset
from cir_retriever.query import essential_chains, fallback_summary
from cir_retriever.strategies import StrategyName, requirements

DEADLINE = "the LLM call failed: no answer before the caller's deadline (generation aborted)"


def test_one_reason_is_quoted_as_is_and_mixed_ones_with_their_counts():
    assert fallback_summary([DEADLINE] * 12) == DEADLINE
    mixed = [DEADLINE] * 11 + ["the model's answer was empty (raw output: 0 characters)"] + [""]
    assert fallback_summary(mixed) == (
        f"11 x {DEADLINE}; 1 x the model's answer was empty (raw output: 0 characters); 1 for other reasons"
    )


def _chains(strategy: StrategyName, by_bytes: bool) -> list[tuple[str, ...]]:
    options = resolve_options(Preset.CIRCO, WeightOverrides(), VariantChoices())
    return [c for c in essential_chains(requirements(strategy, options), by_bytes) if c]


def test_the_essential_stages_follow_the_strategy_and_the_reference():
    assert _chains(StrategyName.IMAGE_ONLY, by_bytes=False) == []  # the stored embedding: the search alone
    assert _chains(StrategyName.IMAGE_ONLY, by_bytes=True) == [("embed_reference_image",)]
    assert _chains(StrategyName.CVSI, by_bytes=True) == [
        ("embed_reference_image",),
        ("embed_reference_image", "embed_pseudo_token_prompt"),
        ("embed_edited_captions",),  # embedded even when the edits fall back to the text
    ]
    assert _chains(StrategyName.CVSI, by_bytes=False) == [
        ("embed_pseudo_token_prompt",),
        ("embed_edited_captions",),
    ]
    # captions, LLM edits and objects are never in it: they can be skipped
    assert _chains(StrategyName.CAPTIONING, by_bytes=False) == [("embed_captioning_text",)]
    assert _chains(StrategyName.WEIMOCIR, by_bytes=True) == [
        ("embed_reference_image",),
        ("embed_modification_text",),
    ]
