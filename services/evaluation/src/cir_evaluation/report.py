"""Human-readable views of an evaluation run: an HTML page of the queries and an SVG heatmap of a sweep.

`write_report` writes `report.html` and its JPEG thumbnails under `report_files/`, referenced by relative
path, so the folder can be copied or served as it is (no network resources, no JavaScript).
`write_heatmap_svg` draws one metric over two swept weights as a self-contained SVG (the CVSI paper's
Fig. 4 form): the value printed in every cell, invalid (NaN) cells hatched, the best cell outlined.
"""

from __future__ import annotations

import hashlib
import html
import math
import numbers
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cir_common.images import upright_rgb
from cir_evaluation.model import EvalSplit, Query, QueryOutcome, Split

REPORT_NAME = "report.html"
FILES_DIR = "report_files"
THUMBNAIL_SIZE = 160
GT_COLOUR = "#1a9850"  # the border and badge of a ground-truth hit
TARGET_COLOUR = "#2166ac"
SUBSET_COLOUR = "#7b3294"
BEST_OUTLINE_COLOUR = "#e41a1c"

# Sequential scale (viridis, sampled at ten evenly spaced points), dark = low, bright = high.
_SCALE = (
    (0x44, 0x01, 0x54),
    (0x48, 0x28, 0x78),
    (0x3E, 0x49, 0x89),
    (0x31, 0x68, 0x8E),
    (0x26, 0x82, 0x8E),
    (0x1F, 0x9E, 0x89),
    (0x35, 0xB7, 0x79),
    (0x6E, 0xCE, 0x58),
    (0xB5, 0xDE, 0x2B),
    (0xFD, 0xE7, 0x25),
)

_STYLE = f"""
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
section {{ border-top: 1px solid #ccc; padding: 1em 0; }}
.query {{ display: flex; gap: 2em; align-items: flex-start; }}
.hits {{ display: flex; gap: 1em; flex-wrap: wrap; margin-top: 1em; }}
figure {{ margin: 0; text-align: center; font-size: 12px; max-width: {THUMBNAIL_SIZE + 8}px; }}
figcaption {{ overflow-wrap: anywhere; }}
th {{ text-align: left; padding-right: 1em; vertical-align: top; }}
.tables {{ display: flex; gap: 2em; flex-wrap: wrap; align-items: flex-start; margin-bottom: 1em; }}
.tables table {{ border-collapse: collapse; }}
.tables caption {{ text-align: left; font-weight: bold; padding-bottom: .3em; }}
.tables td, .tables th {{ border-bottom: 1px solid #e4e4e4; padding: .15em .8em .15em 0; }}
.tables td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
h2 {{ margin-top: 0; font-size: 1.2em; }}
h3 {{ margin: 0 0 .6em 0; font-size: 1em; color: #555; }}
.thumb {{ position: relative; box-sizing: content-box; width: {THUMBNAIL_SIZE}px; height: {THUMBNAIL_SIZE}px;
  display: flex; align-items: center; justify-content: center; background: #f4f4f4;
  border: 4px solid transparent; }}
.thumb img {{ display: block; max-width: {THUMBNAIL_SIZE}px; max-height: {THUMBNAIL_SIZE}px; }}
.gt .thumb {{ border-color: {GT_COLOUR}; }}
.missing {{ color: #777; font-size: 11px; overflow-wrap: anywhere; padding: .5em; box-sizing: border-box;
  border: 4px dashed #bbb; }}
.gt .missing {{ border-style: solid; border-color: {GT_COLOUR}; }}
.badges {{ position: absolute; top: 0; left: 0; display: flex; gap: 2px; }}
.badge {{ color: #fff; font-weight: bold; font-size: 11px; padding: 1px 5px; }}
.badge.gt {{ background: {GT_COLOUR}; }}
.badge.target {{ background: {TARGET_COLOUR}; }}
.badge.subset {{ background: {SUBSET_COLOUR}; }}
.note {{ color: #555; font-style: italic; }}
.degraded {{ color: #a6550d; }}
.degraded ul {{ margin: 0; padding-left: 1.2em; }}
"""


@dataclass(frozen=True)
class _Thumbnail:
    src: str  # relative to the report; "" when the image is missing or unreadable
    width: int = 0
    height: int = 0


class _Thumbnails:
    """Makes each (category, id) thumbnail once; looks ids up in a dict built from the split's galleries."""

    def __init__(self, split: EvalSplit, folder: Path) -> None:
        self._split = split
        self._folder = folder
        self._paths: dict[str, dict[str, Path]] = {}
        self._made: dict[tuple[str, str], _Thumbnail] = {}

    def path(self, image_id: str, category: str) -> Path | None:
        # Same answer as split.image_path (the first item with that id), without a scan per lookup.
        if category not in self._paths:
            index: dict[str, Path] = {}
            for item in self._split.galleries.get(category, ()):
                index.setdefault(item.id, item.path)
            self._paths[category] = index
        return self._paths[category].get(image_id)

    def get(self, image_id: str, category: str) -> _Thumbnail:
        key = (category, image_id)
        if key not in self._made:
            self._made[key] = self._make(image_id, category)
        return self._made[key]

    def _make(self, image_id: str, category: str) -> _Thumbnail:
        source = self.path(image_id, category)
        if source is None:
            return _Thumbnail("")
        slug = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{category}-{image_id}" if category else image_id)[:48]
        digest = hashlib.sha1(f"{category}\0{image_id}".encode()).hexdigest()[:10]
        name = f"{slug}-{digest}.jpg"
        try:
            with Image.open(source) as image:
                image.draft("RGB", (THUMBNAIL_SIZE * 2, THUMBNAIL_SIZE * 2))
                # upright_rgb may hand back the opened image itself: finish while its file is open
                flat = upright_rgb(image)
                flat.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                self._folder.mkdir(parents=True, exist_ok=True)
                flat.save(self._folder / name, "JPEG", quality=85)
        except (OSError, ValueError, Image.DecompressionBombError):
            return _Thumbnail("")
        return _Thumbnail(f"{FILES_DIR}/{name}", flat.width, flat.height)


def write_report(
    out_dir: Path,
    split: EvalSplit,
    outcomes: Sequence[QueryOutcome],
    metrics: Mapping[str, object],
    *,
    title: str,
    settings: Mapping[str, str],
    top_k: int = 10,
    max_queries: int | None = 200,
) -> Path:
    """Write `out_dir/report.html` (and its thumbnails in `out_dir/report_files/`); return the page's path.

    Shows the first `max_queries` outcomes (None: all) in the given order, each with its top `top_k`.
    The thumbnails folder is made afresh on every call.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = out_dir / FILES_DIR
    if folder.exists():
        shutil.rmtree(folder)
    thumbnails = _Thumbnails(split, folder)
    queries = {query.id: query for query in split.queries}
    shown = list(outcomes) if max_queries is None else list(outcomes)[: max(max_queries, 0)]
    sections = []
    unknown = 0
    for number, outcome in enumerate(shown, start=1):
        query = queries.get(outcome.query_id)
        if query is None:
            unknown += 1
            continue
        sections.append(_query_section(number, query, outcome, split, thumbnails, top_k))

    notes = [f"{split.dataset.value} {split.split.value}: showing {len(sections)} of {len(outcomes)} queries"]
    if unknown:
        notes.append(f"{unknown} outcome(s) name a query that is not in the split and are left out")
    if split.split is Split.TEST:
        notes.append("test split: the ground truth is withheld, so no hit is marked")
    header = (
        f"<h1>{_esc(title)}</h1>"
        + "".join(f'<p class="note">{_esc(note)}</p>' for note in notes)
        + '<div class="tables">'
        + _table("settings", [(k, v) for k, v in settings.items()])
        + "</div>"
        + f'<div class="tables">{_metrics_tables(metrics)}</div>'
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>{_STYLE}</style></head><body>
{header}
{"".join(sections)}
</body></html>
"""
    path = out_dir / REPORT_NAME
    path.write_text(page, encoding="utf-8")
    return path


def _query_section(
    number: int, query: Query, outcome: QueryOutcome, split: EvalSplit, thumbnails: _Thumbnails, top_k: int
) -> str:
    ground_truth = set(query.ground_truth)
    subset = set(query.subset) - {query.reference_id}
    hits = []
    for rank, image_id in enumerate(outcome.ranking[: max(top_k, 0)], start=1):
        score = f"<br>{outcome.scores[rank - 1]:+.4f}" if rank <= len(outcome.scores) else ""
        badges = []
        if image_id in ground_truth:
            badges.append(("gt", "GT"))
        if query.target_id and image_id == query.target_id:
            badges.append(("target", "target"))
        if image_id in subset:
            badges.append(("subset", "subset"))
        hits.append(
            _figure(
                thumbnails,
                image_id,
                query.category,
                f"{rank}. {_esc(image_id)}{score}",
                badges,
                gt=image_id in ground_truth,
            )
        )

    first_gt = next((r for r, i in enumerate(outcome.ranking, start=1) if i in ground_truth), None)
    figures = [
        _figure(thumbnails, query.reference_id, query.category, f"reference: {_esc(query.reference_id)}")
    ]
    if not ground_truth:
        where = "none (test split: withheld)" if split.split is Split.TEST else "none given"
    elif first_gt is None:
        where = f"first ground truth not in the ranking ({len(outcome.ranking)} ranked)"
    else:
        in_top = sum(1 for i in outcome.ranking[: max(top_k, 0)] if i in ground_truth)
        where = f"first ground truth at rank {first_gt}; {in_top} of {len(ground_truth)} in the top {top_k}"
    if ground_truth and (first_gt is None or first_gt > top_k):
        # Show what should have been found, next to the reference.
        wanted = query.target_id or query.ground_truth[0]
        rank = f"rank {outcome.ranking.index(wanted) + 1}" if wanted in outcome.ranking else "not ranked"
        figures.append(
            _figure(
                thumbnails,
                wanted,
                query.category,
                f"target: {_esc(wanted)} ({rank})",
                [("gt", "GT")],
                gt=True,
            )
        )

    details: list[tuple[str, str]] = [("ground truth", where)]
    if query.ground_truth:
        details.append(("ground-truth ids", ", ".join(query.ground_truth)))
    if query.shared_concept:
        details.append(("shared concept", query.shared_concept))
    if query.semantic_aspects:
        details.append(("semantic aspects", ", ".join(query.semantic_aspects)))
    if outcome.captions:
        details.append(("captions", " | ".join(outcome.captions)))
    if outcome.edited_captions:
        details.append(("edited captions", " | ".join(outcome.edited_captions)))
    if outcome.added_objects:
        details.append(("added objects", outcome.added_objects))
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in details)
    if outcome.degradations:
        items = "".join(f"<li>{_esc(d)}</li>" for d in outcome.degradations)
        rows += f'<tr><th>degradations</th><td class="degraded"><ul>{items}</ul></td></tr>'
    category = f" · {_esc(query.category)}" if query.category else ""
    return (
        f"<section><h3>#{number} · query {_esc(query.id)}{category}</h3>"
        f'<div class="query">{"".join(figures)}'
        f"<div><h2>{_esc(query.text)}</h2><table>{rows}</table></div></div>"
        f'<div class="hits">{"".join(hits)}</div></section>'
    )


def _figure(
    thumbnails: _Thumbnails,
    image_id: str,
    category: str,
    caption_html: str,
    badges: Sequence[tuple[str, str]] = (),
    *,
    gt: bool = False,
) -> str:
    thumb = thumbnails.get(image_id, category)
    marks = "".join(f'<span class="badge {kind}">{_esc(label)}</span>' for kind, label in badges)
    marks = f'<span class="badges">{marks}</span>' if marks else ""
    if thumb.src:
        size = f'width="{thumb.width}" height="{thumb.height}"'
        inner = f'<img src="{_esc(thumb.src)}" {size} alt="{_esc(image_id)}">'
        box = f'<div class="thumb">{inner}{marks}</div>'
    else:
        box = f'<div class="thumb missing">{_esc(image_id)}<br>(image missing){marks}</div>'
    return (
        f'<figure class="{"hit gt" if gt else "hit"}">{box}<figcaption>{caption_html}</figcaption></figure>'
    )


def _metrics_tables(metrics: Mapping[str, object]) -> str:
    flat = [(k, v) for k, v in metrics.items() if not isinstance(v, Mapping)]
    tables = [_table("metrics", flat)] if flat else []
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            tables.append(_nested_table(str(key), value))
    return "".join(tables) or '<p class="note">no metrics</p>'


def _nested_table(caption: str, values: Mapping[object, object]) -> str:
    """A dict of dicts as a matrix (rows: its keys; columns: the inner keys); otherwise key/value rows."""
    if values and all(isinstance(v, Mapping) for v in values.values()):
        rows = {str(k): dict(_flatten(v)) for k, v in values.items()}  # type: ignore[arg-type]
        columns: list[str] = []
        for row in rows.values():
            columns.extend(c for c in row if c not in columns)
        head = "<tr><th></th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
        body = "".join(
            f"<tr><th>{_esc(name)}</th>"
            + "".join(_cell(row[c]) if c in row else "<td></td>" for c in columns)
            + "</tr>"
            for name, row in rows.items()
        )
        return f"<table><caption>{_esc(caption)}</caption>{head}{body}</table>"
    return _table(caption, list(_flatten(values)))


def _flatten(values: Mapping[object, object], prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flatten(value, f"{name}."))
        else:
            out.append((name, value))
    return out


def _table(caption: str, rows: Sequence[tuple[object, object]]) -> str:
    body = "".join(f"<tr><th>{_esc(str(k))}</th>{_cell(v)}</tr>" for k, v in rows)
    return f"<table><caption>{_esc(caption)}</caption>{body}</table>"


def _cell(value: object) -> str:
    numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return (
        f'<td class="num">{_esc(format_value(value))}</td>'
        if numeric
        else f"<td>{_esc(format_value(value))}</td>"
    )


def format_value(value: object) -> str:
    """A metric value as text: floats with 2 decimals from 1 up, 4 below; lists joined; None as '–'."""
    if value is None:
        return "–"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            return str(number)
        return f"{number:.2f}" if abs(number) >= 1 else f"{number:.4f}"
    if isinstance(value, list | tuple):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


# --- heatmap -----------------------------------------------------------------------------------------

_CELL_W, _CELL_H = 64, 40
_LEFT, _TOP, _BOTTOM = 110, 56, 64
_LEGEND_GAP, _LEGEND_W, _LEGEND_LABELS = 28, 16, 72


def scale_colour(t: float) -> str:
    """The colour at `t` in [0, 1] on the heatmap's sequential scale, as '#rrggbb'."""
    t = min(max(t, 0.0), 1.0) * (len(_SCALE) - 1)
    low = min(int(t), len(_SCALE) - 2)
    frac = t - low
    rgb = (round(a + (b - a) * frac) for a, b in zip(_SCALE[low], _SCALE[low + 1], strict=True))
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _ink(fill: str) -> str:
    r, g, b = (int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#ffffff" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "#222222"


def write_heatmap_svg(
    path: Path,
    *,
    x_name: str,
    x_values: Sequence[float],
    y_name: str,
    y_values: Sequence[float],
    values: np.ndarray,
    metric: str,
    best: tuple[int, int] | None = None,
) -> Path:
    """Write a heatmap of `metric` over two swept weights as a self-contained SVG; return `path`.

    `values[i, j]` is the metric at `y_values[i]` (row i, first row on top) and `x_values[j]` (column j).
    NaN cells (invalid combinations) are hatched and left without a value. `best` is the (row, column)
    to outline; None outlines nothing.
    """
    grid = np.asarray(values, dtype=float)
    ny, nx = len(y_values), len(x_values)
    if grid.shape != (ny, nx) or nx == 0 or ny == 0:
        raise ValueError(f"values has shape {grid.shape}; expected ({ny}, {nx}), both non-zero")
    if best is not None and not (0 <= best[0] < ny and 0 <= best[1] < nx):
        raise ValueError(f"best {best} is outside the {ny}x{nx} grid")
    finite = grid[np.isfinite(grid)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)

    grid_w, grid_h = nx * _CELL_W, ny * _CELL_H
    legend_x = _LEFT + grid_w + _LEGEND_GAP
    width = legend_x + _LEGEND_W + _LEGEND_LABELS
    height = _TOP + grid_h + _BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f"<title>{_esc(metric)} over {_esc(x_name)} and {_esc(y_name)}</title>",
        "<defs>",
        '<pattern id="nan-hatch" width="8" height="8" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="8" height="8" fill="#f4f4f4"/>'
        '<line x1="0" y1="0" x2="0" y2="8" stroke="#c8c8c8" stroke-width="3"/></pattern>',
        '<linearGradient id="legend-scale" x1="0" y1="1" x2="0" y2="0">'
        + "".join(
            f'<stop offset="{i / (len(_SCALE) - 1):.4f}" stop-color="{scale_colour(i / (len(_SCALE) - 1))}"/>'
            for i in range(len(_SCALE))
        )
        + "</linearGradient>",
        "</defs>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{_LEFT + grid_w / 2}" y="{_TOP - 24}" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{_esc(metric)}</text>',
    ]
    for i in range(ny):
        for j in range(nx):
            x, y = _LEFT + j * _CELL_W, _TOP + i * _CELL_H
            value = grid[i, j]
            label = f"{_esc(y_name)}={_num(y_values[i])}, {_esc(x_name)}={_num(x_values[j])}"
            if not math.isfinite(value):
                parts.append(
                    f'<rect class="cell nan" x="{x}" y="{y}" width="{_CELL_W}" height="{_CELL_H}" '
                    f'fill="url(#nan-hatch)" stroke="#ffffff"><title>{label}: invalid</title></rect>'
                )
                continue
            fill = scale_colour(0.5 if hi == lo else (value - lo) / (hi - lo))
            parts.append(
                f'<rect class="cell" x="{x}" y="{y}" width="{_CELL_W}" height="{_CELL_H}" fill="{fill}" '
                f'stroke="#ffffff"><title>{label}: {_esc(format_value(value))}</title></rect>'
                f'<text x="{x + _CELL_W / 2}" y="{y + _CELL_H / 2}" text-anchor="middle" '
                f'dominant-baseline="central" fill="{_ink(fill)}">{_esc(format_value(value))}</text>'
            )
    if best is not None:
        bx, by = _LEFT + best[1] * _CELL_W, _TOP + best[0] * _CELL_H
        parts.append(
            f'<rect class="best" x="{bx + 1.5}" y="{by + 1.5}" width="{_CELL_W - 3}" height="{_CELL_H - 3}" '
            f'fill="none" stroke="{BEST_OUTLINE_COLOUR}" stroke-width="3"/>'
        )
    # Axes: tick values under the columns and left of the rows, names centred on each axis.
    for j, xv in enumerate(x_values):
        parts.append(
            f'<text x="{_LEFT + (j + 0.5) * _CELL_W}" y="{_TOP + grid_h + 16}" '
            f'text-anchor="middle">{_num(xv)}</text>'
        )
    for i, yv in enumerate(y_values):
        parts.append(
            f'<text x="{_LEFT - 8}" y="{_TOP + (i + 0.5) * _CELL_H}" text-anchor="end" '
            f'dominant-baseline="central">{_num(yv)}</text>'
        )
    parts.append(
        f'<text x="{_LEFT + grid_w / 2}" y="{_TOP + grid_h + 42}" text-anchor="middle" '
        f'font-size="13">{_esc(x_name)}</text>'
    )
    cy = _TOP + grid_h / 2
    parts.append(
        f'<text x="{_LEFT - 64}" y="{cy}" text-anchor="middle" font-size="13" '
        f'transform="rotate(-90 {_LEFT - 64} {cy})">{_esc(y_name)}</text>'
    )
    # Legend: the scale bottom (low) to top (high), with its low, middle and high values.
    parts.append(
        f'<rect x="{legend_x}" y="{_TOP}" width="{_LEGEND_W}" height="{grid_h}" '
        'fill="url(#legend-scale)" stroke="#999999"/>'
    )
    for frac, tick in ((0.0, lo), (0.5, (lo + hi) / 2), (1.0, hi)):
        ty = _TOP + grid_h * (1 - frac)
        parts.append(
            f'<line x1="{legend_x + _LEGEND_W}" y1="{ty}" x2="{legend_x + _LEGEND_W + 4}" y2="{ty}" '
            'stroke="#555555"/>'
            f'<text x="{legend_x + _LEGEND_W + 7}" y="{ty}" dominant-baseline="central" '
            f'font-size="11">{_esc(format_value(tick))}</text>'
        )
    parts.append("</svg>\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _num(value: float) -> str:
    return _esc(f"{float(value):g}")
