"""The evaluation report and sweep heatmap, rendered in headless Chromium and checked pixel by pixel.

The gallery images are solid, distinctive colours, so a screenshot shows whether the thumbnails really
loaded: a broken image path leaves those colours out of the page (the second case proves it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cir_evaluation.model import DatasetName, EvalSplit, GalleryItem, Query, QueryOutcome, Split
from cir_evaluation.report import (
    FILES_DIR,
    GT_COLOUR,
    write_heatmap_svg,
    write_report,
)

CHROMIUM = Path("/usr/bin/chromium")
RED = (255, 0, 0)  # the reference
BLUE = (0, 0, 255)  # the ground-truth target
YELLOW = (255, 255, 0)  # a distractor ranked first
CYAN = (0, 255, 255)  # a distractor
ORANGE = (255, 128, 0)  # only in the "shirt" gallery, under the same id as a "dress" image
PURPLE = (128, 0, 128)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


# --- helpers --------------------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> Path:
    # Fail, not skip: a skipped browser test looks like a pass and hides a broken dev setup.
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"{CHROMIUM} not found: run scripts/install-dev.sh (it apt-installs chromium)", pytrace=False
        )
    return CHROMIUM


def _screenshot(browser: Path, page: Path, work: Path, size: tuple[int, int] = (1200, 1600)) -> np.ndarray:
    """Render `page` in headless Chromium; return the screenshot as an RGB array."""
    work.mkdir(parents=True, exist_ok=True)
    png = work / "shot.png"
    log = work / "chromium.log"
    command = [
        str(browser),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={work / 'profile'}",
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={png}",
        page.resolve().as_uri(),
    ]
    with log.open("wb") as out:
        # Its own process group, so the browser and every helper it spawned can be stopped together.
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish in 90 s; log: {log}")
        finally:
            with contextlib.suppress(ProcessLookupError):  # the whole group has already exited
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if not png.is_file():
        tail = log.read_text(errors="replace")[-2000:]
        pytest.fail(f"chromium wrote no screenshot (rc {process.returncode}):\n{tail}")
    with Image.open(png) as shot:
        return np.asarray(shot.convert("RGB"), dtype=np.int16)


def _count(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    return int(np.all(np.abs(pixels - np.array(colour)) <= tolerance, axis=-1).sum())


def _solid(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (300, 200)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


def _split(root: Path, split: Split = Split.VAL) -> EvalSplit:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    gallery = (
        GalleryItem("ref-red", _solid(images / "red.png", RED)),
        GalleryItem("gt-blue", _solid(images / "blue.jpg", BLUE, (200, 300))),
        GalleryItem("d-yellow", _solid(images / "yellow.png", YELLOW)),
        GalleryItem("d-cyan", _solid(images / "cyan.png", CYAN)),
        GalleryItem("gone", images / "does-not-exist.png"),
    )
    val = split is Split.VAL
    queries = (
        Query(
            id="q1",
            reference_id="ref-red",
            text="make it blue",
            target_id="gt-blue" if val else "",
            ground_truth=("gt-blue",) if val else (),
        ),
        Query(
            id="q2",
            reference_id="ref-red",
            text="anything but yellow",
            target_id="gt-blue" if val else "",
            ground_truth=("gt-blue",) if val else (),
        ),
    )
    return EvalSplit(DatasetName.CIRCO, split, root, {"": gallery}, queries)


OUTCOMES = (
    QueryOutcome(
        "q1",
        ranking=["d-yellow", "gt-blue", "gone", "d-cyan"],
        scores=[0.9, 0.8, 0.7, 0.6],
        edited_captions=["a blue square", "a blue block"],
        added_objects="blue paint",
        degradations=["reasoner: timeout, used the raw text"],
    ),
    QueryOutcome("q2", ranking=["d-cyan", "d-yellow", "gone", "gt-blue"], scores=[0.5, 0.4, 0.3, 0.2]),
)
METRICS = {
    "mAP@5": 41.234,
    "mAP@10": 0.5,
    "queries": 2,
    "per_aspect": {"cardinality": 12.5, "addition": 7.25},
    "dress": {"R@10": 20.0, "R@50": 40.5},
    "by_category": {"dress": {"R@10": 20.0, "R@50": 40.5}, "shirt": {"R@10": 30.0}},
}
SETTINGS = {"strategy": "cvsi", "alpha": "0.25"}


class _Text(HTMLParser):
    """The page's visible text, its start tags, and its tables as {caption: rows of cell texts}."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sources: list[str] = []
        self.text: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._caption: list[str] = []
        self._rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._in: str = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("style", "caption"):
            self._in = tag
        elif tag == "img":
            self.sources.append(dict(attrs).get("src") or "")
        elif tag == "table":
            self._rows, self._caption = [], []
        elif tag == "tr":
            self._rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "caption"):
            self._in = ""
        elif tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self.tables["".join(self._caption).strip()] = self._rows

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            return
        self.text.append(data)
        if self._in == "caption":
            self._caption.append(data)
        elif self._cell is not None:
            self._cell.append(data)


def _parse(page: Path) -> _Text:
    parser = _Text()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


# --- browser tests ---------------------------------------------------------------------------------------


def test_report_renders_thumbnails_and_marks_ground_truth(tmp_path: Path, chromium: Path) -> None:
    split = _split(tmp_path / "data")
    page = write_report(
        tmp_path / "out", split, OUTCOMES, METRICS, title="CIRCO val", settings=SETTINGS, top_k=4
    )
    assert page == tmp_path / "out" / "report.html"
    pixels = _screenshot(chromium, page, tmp_path / "shot")

    # Thumbnails are at most 160 px a side: each solid image shows as thousands of pixels.
    assert _count(pixels, RED) > 2 * 8_000, "the reference thumbnails did not render"
    assert _count(pixels, BLUE) > 2 * 8_000, "the ground-truth thumbnails did not render"
    assert _count(pixels, YELLOW) > 2 * 8_000, "the ranked distractors did not render"
    assert _count(pixels, CYAN) > 2 * 8_000
    # The green GT border (4 px around a 160 px box) and the GT badges, once per query.
    assert _count(pixels, _rgb(GT_COLOUR), tolerance=12) > 2 * 2_000, "no visible ground-truth border"

    parsed = _parse(page)
    text = " ".join(parsed.text)
    assert "does-not-exist" not in text and "(image missing)" in text  # the placeholder, with its id
    assert "gone" in text
    assert "first ground truth at rank 2" in text
    assert "first ground truth at rank 4" in text
    assert "reasoner: timeout, used the raw text" in text
    assert "a blue square | a blue block" in text and "blue paint" in text
    assert parsed.tags.count("img") == 2 + 2 * 3  # two references, three readable hits per query
    assert "script" not in parsed.tags and "link" not in parsed.tags


def test_report_without_its_thumbnails_shows_no_image_colours(tmp_path: Path, chromium: Path) -> None:
    # The control for the test above: the same page with the thumbnails folder gone must lose the colours,
    # so the colours it counts can only come from images that really loaded.
    split = _split(tmp_path / "data")
    page = write_report(
        tmp_path / "out", split, OUTCOMES, METRICS, title="CIRCO val", settings=SETTINGS, top_k=4
    )
    assert any((tmp_path / "out" / FILES_DIR).iterdir())
    for path in (tmp_path / "out" / FILES_DIR).iterdir():
        path.unlink()
    (tmp_path / "out" / FILES_DIR).rmdir()
    pixels = _screenshot(chromium, page, tmp_path / "shot")
    for colour in (RED, BLUE, YELLOW, CYAN):
        assert _count(pixels, colour) < 200, f"{colour} rendered without its image file"
    assert _count(pixels, _rgb(GT_COLOUR), tolerance=12) > 2_000  # the page itself did render


def test_heatmap_renders_cells_in_their_colours(tmp_path: Path, chromium: Path) -> None:
    alphas = [0.0, 0.25, 0.5, 0.75]
    betas = [0.0, 0.5, 1.0]
    values = np.array(
        [[10.0, 20.0, 30.0, 40.0], [15.0, 25.0, 35.0, np.nan], [12.0, np.nan, np.nan, np.nan]], dtype=float
    )
    svg = write_heatmap_svg(
        tmp_path / "sweep" / "heatmap.svg",
        x_name="alpha",
        x_values=alphas,
        y_name="beta",
        y_values=betas,
        values=values,
        metric="mAP@10 <CIRCO>",
        best=(0, 3),
    )
    root = ET.parse(svg).getroot()
    ns = {"s": "http://www.w3.org/2000/svg"}
    cells = root.findall("s:rect[@class='cell']", ns)
    hatched = root.findall("s:rect[@class='cell nan']", ns)
    assert len(cells) == 8 and len(hatched) == 4
    texts = [t.text for t in root.findall("s:text", ns)]
    for value in ("10.00", "25.00", "40.00", "0.25", "0.75", "alpha", "beta", "mAP@10 <CIRCO>"):
        assert value in texts
    assert "nan" not in " ".join(t or "" for t in texts)
    fills = {c.get("fill") for c in cells}
    assert len(fills) == 8  # eight different values, eight different colours
    assert root.find("s:rect[@class='best']", ns) is not None

    pixels = _screenshot(chromium, svg, tmp_path / "shot", size=(800, 500))
    for fill in fills:
        assert fill is not None
        # A 64x40 cell less its printed value: well over a thousand pixels of its colour.
        assert _count(pixels, _rgb(fill), tolerance=3) > 1_000, f"cell colour {fill} not rendered"
    assert _count(pixels, (0xE4, 0x1A, 0x1C), tolerance=20) > 200, "best cell not outlined"


# --- unit tests --------------------------------------------------------------------------------------------


def test_every_text_is_escaped(tmp_path: Path) -> None:
    nasty = '<script>alert("x")</script> & <b>bold</b>'
    split = _split(tmp_path / "data")
    split = EvalSplit(
        split.dataset,
        split.split,
        split.root,
        split.galleries,
        (
            Query(
                id="q<1>", reference_id="ref-red", text=nasty, target_id="gt-blue", ground_truth=("gt-blue",)
            ),
        ),
    )
    outcome = QueryOutcome(
        "q<1>",
        ranking=["gt-blue"],
        scores=[1.0],
        edited_captions=[nasty],
        added_objects=nasty,
        degradations=[nasty],
    )
    page = write_report(
        tmp_path / "out",
        split,
        [outcome],
        {"<i>m</i>": 1.0, "<nested>": {"<k>": "<v>"}},
        title=nasty,
        settings={"<s>": nasty},
    )
    source = page.read_text(encoding="utf-8")
    assert "<script>" not in source and "<b>" not in source and "<i>" not in source
    parsed = _parse(page)
    assert not {"script", "b", "i", "nested", "k", "v", "s"} & set(parsed.tags)
    text = "".join(parsed.text)
    # The title (<title> and <h1>), the query text, edited captions, added objects, degradations, settings.
    assert text.count(nasty) == 7
    assert "q<1>" in text and "<i>m</i>" in text and "<k>" in text and "<v>" in text


def test_nested_metrics_become_their_own_tables(tmp_path: Path) -> None:
    page = write_report(
        tmp_path / "out", _split(tmp_path / "data"), OUTCOMES, METRICS, title="t", settings=SETTINGS
    )
    tables = _parse(page).tables
    assert tables["settings"] == [["strategy", "cvsi"], ["alpha", "0.25"]]
    assert tables["metrics"] == [["mAP@5", "41.23"], ["mAP@10", "0.5000"], ["queries", "2"]]
    assert tables["per_aspect"] == [["cardinality", "12.50"], ["addition", "7.25"]]
    assert tables["dress"] == [["R@10", "20.00"], ["R@50", "40.50"]]
    # A dict of dicts is one matrix: rows are its keys, columns the union of the inner keys.
    assert tables["by_category"] == [
        ["", "R@10", "R@50"],
        ["dress", "20.00", "40.50"],
        ["shirt", "30.00", ""],
    ]


def test_test_split_says_the_ground_truth_is_withheld(tmp_path: Path) -> None:
    page = write_report(
        tmp_path / "out",
        _split(tmp_path / "data", Split.TEST),
        OUTCOMES,
        {},
        title="t",
        settings={},
    )
    text = " ".join(_parse(page).text)
    assert "ground truth is withheld" in text and "none (test split: withheld)" in text
    assert "no metrics" in text
    assert 'class="hit gt"' not in page.read_text(encoding="utf-8")


def test_fashioniq_thumbnails_come_from_the_query_category(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    galleries = {
        "dress": (
            GalleryItem("A1", _solid(images / "dress-a1.png", PURPLE)),
            GalleryItem("R", _solid(images / "dress-r.png", RED)),
        ),
        "shirt": (
            GalleryItem("A1", _solid(images / "shirt-a1.png", ORANGE)),
            GalleryItem("R", _solid(images / "shirt-r.png", RED)),
        ),
    }
    queries = (
        Query("dress/0", "R", "longer", "A1", ("A1",), category="dress"),
        Query("shirt/0", "R", "with sleeves", "A1", ("A1",), category="shirt"),
    )
    split = EvalSplit(DatasetName.FASHIONIQ, Split.VAL, tmp_path, galleries, queries)
    outcomes = [QueryOutcome("dress/0", ["A1"], [1.0]), QueryOutcome("shirt/0", ["A1"], [1.0])]
    page = write_report(tmp_path / "out", split, outcomes, {}, title="t", settings={})

    sources = _parse(page).sources
    hits = [src for src in sources if "A1" in src]
    assert len(hits) == 2 and hits[0] != hits[1]
    for src, colour in zip(hits, (PURPLE, ORANGE), strict=True):
        assert not Path(src).is_absolute()
        with Image.open(page.parent / src) as thumb:
            assert thumb.format == "JPEG" and max(thumb.size) <= 160
            assert np.abs(np.asarray(thumb.convert("RGB"), dtype=int) - colour).max() < 20


def test_max_queries_and_unknown_outcomes(tmp_path: Path) -> None:
    split = _split(tmp_path / "data")
    outcomes = [QueryOutcome("nope", ["gt-blue"], [1.0]), *OUTCOMES]
    page = write_report(tmp_path / "out", split, outcomes, {}, title="t", settings={}, max_queries=2)
    text = " ".join(_parse(page).text)
    assert "showing 1 of 3 queries" in text
    assert "1 outcome(s) name a query that is not in the split" in text
    assert "make it blue" in text and "anything but yellow" not in text


def test_ground_truth_below_the_top_k_shows_its_rank_and_image(tmp_path: Path) -> None:
    split = _split(tmp_path / "data")
    outcomes = [*OUTCOMES[:1], QueryOutcome("q2", ranking=["d-cyan"], scores=[0.5])]
    page = write_report(tmp_path / "out", split, outcomes, {}, title="t", settings={}, top_k=1)
    parsed = _parse(page)
    text = " ".join(parsed.text)
    assert "first ground truth at rank 2; 0 of 1 in the top 1" in text
    assert "target: gt-blue (rank 2)" in text
    assert "first ground truth not in the ranking (1 ranked)" in text
    assert "target: gt-blue (not ranked)" in text
    # Per query: the reference, the target beside it and the one hit shown; one thumbnail file per image.
    assert len(parsed.sources) == 6
    assert len(set(parsed.sources)) == len(list((tmp_path / "out" / FILES_DIR).iterdir())) == 4


def test_a_jpeg_smaller_than_a_thumbnail_is_shown_as_it_is(tmp_path: Path) -> None:
    """Nothing to shrink or convert: the opened file itself becomes the thumbnail (COCO has such images)."""
    images = tmp_path / "images"
    images.mkdir()
    gallery = (
        GalleryItem("R", _solid(images / "small-ref.jpg", RED, (48, 48))),
        GalleryItem("T", _solid(images / "small-target.jpg", BLUE, (40, 60))),
    )
    split = EvalSplit(
        DatasetName.CIRCO, Split.VAL, tmp_path, {"": gallery}, (Query("q", "R", "t", "T", ("T",)),)
    )
    page = write_report(
        tmp_path / "out", split, [QueryOutcome("q", ["T"], [1.0])], {}, title="t", settings={}
    )
    shown = [page.parent / src for src in _parse(page).sources]
    assert len(shown) == 2
    for path, (size, colour) in zip(shown, (((48, 48), RED), ((40, 60), BLUE)), strict=True):
        with Image.open(path) as thumb:
            assert thumb.size == size
            assert np.abs(np.asarray(thumb.convert("RGB"), dtype=int) - colour).max() < 20
