"""The InstructCIR world proof's own helpers (the served pipeline runs in bench/instructcir_bench.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cir_tools.world.instructcir_proof import curve_svg, first_triplets, scaling_counts


def test_scaling_counts_halve_down_from_the_total() -> None:
    assert scaling_counts(2400, 4) == [300, 600, 1200, 2400]
    assert scaling_counts(5, 4) == [2, 5]


def test_first_triplets_keeps_the_file_order(tmp_path: Path) -> None:
    source = tmp_path / "all.jsonl"
    source.write_text("".join(f'{{"n": {i}}}\n' for i in range(10)))
    out = first_triplets(source, 4, tmp_path / "four.jsonl")
    assert out.read_text().splitlines() == [f'{{"n": {i}}}' for i in range(4)]
    with pytest.raises(ValueError, match="fewer than 11"):
        first_triplets(source, 11, tmp_path / "eleven.jsonl")


def test_curve_svg_is_valid_svg_with_a_point_per_run_and_the_reference_lines() -> None:
    svg = curve_svg([(300, 5.0), (600, 9.5), (1200, 14.25)], {"image_only": 17.3, "cvsi": 21.0}, "R@1")
    root = ET.fromstring(svg)
    circles = root.findall("{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 3
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "cvsi 21.0" in texts and "image_only 17.3" in texts and "14.2" in texts
    # Higher recall is drawn higher (smaller y).
    ys = [float(c.get("cy")) for c in circles]
    assert ys[0] > ys[1] > ys[2]


def test_fashioniq_s_nested_recalls_become_flat_benchmark_keys() -> None:
    from cir_tools.world.quality import _flat, metric_key

    metrics = {
        "average": {"R@10": 70.0},
        "per_category": {"dress": {"R@10": 60.0, "queries": 3}},
        "queries": 9,
    }
    flat = {metric_key(name): value for name, value in _flat(metrics)}
    assert flat == {
        "average_r_at_10": 70.0,
        "per_category_dress_r_at_10": 60.0,
        "per_category_dress_queries": 3.0,
        "queries": 9.0,
    }
