"""The per-stage latency estimates that decide which work a search's deadline can still cover.

Fed known durations, never timed: what is under test is the arithmetic of the decision.
"""

from __future__ import annotations

import numpy as np
import pytest

from cir_common.errors import ConfigError
from cir_retriever.latency import StageEstimates, quantile


def test_a_stage_never_observed_has_no_estimate_and_may_always_run():
    estimates = StageEstimates(window=8, quantile=0.5)
    assert estimates.estimate_ms("edit_captions") is None
    # cold start: even no time left at all does not shed a stage nobody has measured yet
    assert estimates.shortfall("edit_captions", ["search"], left_s=0.0) is None
    assert estimates.snapshot() == {}


def test_the_estimate_is_the_quantile_of_the_recent_window():
    median = StageEstimates(window=5, quantile=0.5)
    high = StageEstimates(window=5, quantile=1.0)
    for value in (100.0, 5.0, 300.0, 7.0, 200.0):  # cache hits (ms) among misses (hundreds of ms)
        median.observe("edit_captions", value)
        high.observe("edit_captions", value)
    assert median.estimate_ms("edit_captions") == 100.0
    assert high.estimate_ms("edit_captions") == 300.0
    # the window keeps the last 5: two new fast runs push the oldest slow ones out
    for value in (4.0, 6.0):
        median.observe("edit_captions", value)
        high.observe("edit_captions", value)
    assert median.estimate_ms("edit_captions") == 7.0  # window now 300, 7, 200, 4, 6
    assert high.estimate_ms("edit_captions") == 300.0
    median.observe("edit_captions", 1.0)
    assert high.estimate_ms("edit_captions") == 300.0  # `high` saw no third new value
    assert median.snapshot() == {"edit_captions": 6.0}  # window 7, 200, 4, 6, 1
    median.observe("other", -3.0)  # a clock step backwards is no negative duration
    assert median.estimate_ms("other") == 0.0


@pytest.mark.parametrize("size", [1, 2, 5, 64, 257])
def test_the_quantile_interpolates_between_ranks_as_numpy_does(size):
    values = sorted(np.random.default_rng(size).exponential(50.0, size).tolist())
    for q in (0.0, 0.1, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0):
        assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12, abs=1e-12)


def test_stages_are_estimated_separately_and_unknown_ones_count_zero():
    estimates = StageEstimates(window=4, quantile=0.5)
    estimates.observe("embed_reference_image", 40.0)
    estimates.observe("search", 10.0)
    assert estimates.estimate_ms("search") == 10.0
    assert estimates.total_ms(["embed_reference_image", "embed_pseudo_token_prompt", "search"]) == 50.0


def test_a_stage_is_short_when_it_and_what_follows_exceed_the_time_left():
    estimates = StageEstimates(window=4, quantile=0.5)
    estimates.observe("edit_captions", 2000.0)
    estimates.observe("embed_edited_captions", 150.0)
    estimates.observe("search", 50.0)
    after = ["embed_edited_captions", "search"]
    assert estimates.shortfall("edit_captions", after, left_s=2.2) is None  # exactly enough
    short = estimates.shortfall("edit_captions", after, left_s=2.1)
    assert short is not None
    assert (short.stage, short.stage_ms, short.after_ms, short.needed_ms) == (
        "edit_captions",
        2000.0,
        200.0,
        2200.0,
    )
    assert short.left_ms == pytest.approx(2100.0)
    assert short.describe() == (
        "estimated 2200 ms (edit_captions 2000 ms + 200 ms for the stages after it), 2100 ms left"
    )
    # the stage alone would fit: what must follow it is what does not
    assert estimates.shortfall("edit_captions", [], left_s=2.1) is None
    # a deadline already past reads as 0 ms left, not a negative figure
    late = estimates.shortfall("search", [], left_s=-1.0)
    assert late is not None and late.describe() == "estimated 50 ms (search 50 ms), 0 ms left"


@pytest.mark.parametrize(
    ("window", "quantile", "setting"),
    [(0, 0.5, "STAGE_ESTIMATE_WINDOW"), (4, 1.5, "STAGE_ESTIMATE_QUANTILE"), (4, -0.1, "QUANTILE")],
)
def test_bad_settings_are_refused_naming_them(window, quantile, setting):
    with pytest.raises(ConfigError, match=setting):
        StageEstimates(window=window, quantile=quantile)
