"""The triplets file: the shared line format, appending, and resuming after a torn write (no services)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cir_tools.triplets.errors import TripletUsageError
from cir_tools.triplets.gallery import image_path, written_uri
from cir_tools.triplets.output import TRIPLET_KEYS, ModelName, TripletFile, TripletRecord, read_triplets
from cir_tools.triplets.pairing import GalleryEntry

CAPTIONER = ModelName("blip2-tiny", "sha256:aa")
REASONER = ModelName("llm-tiny", "sha256:bb")


def _record(
    reference: str, target: str, text: str = "make it blue", outcome: str = "parsed"
) -> TripletRecord:
    return TripletRecord(
        reference_id=reference,
        target_id=target,
        reference_uri=f"/g/{reference}.png",
        target_uri=f"/g/{target}.png",
        reference_caption=f"a photo of {reference}",
        target_caption=f"a photo of {target}",
        text=text,
        pairing="random",
        outcome=outcome,
        captioner=CAPTIONER,
        reasoner=REASONER,
    )


def test_a_line_holds_the_shared_keys() -> None:
    line = json.loads(_record("a", "b", "turn it into a café").line())
    assert tuple(line) == TRIPLET_KEYS
    assert line["models"] == {
        "captioner": {"name": "blip2-tiny", "revision": "sha256:aa"},
        "reasoner": {"name": "llm-tiny", "revision": "sha256:bb"},
    }
    assert (line["text"], line["outcome"], line["pairing"]) == ("turn it into a café", "parsed", "random")


def test_appended_batches_are_read_back_and_a_pair_is_held_in_both_directions(tmp_path: Path) -> None:
    path = tmp_path / "out" / "triplets.jsonl"
    with TripletFile.open(path) as out:
        assert (out.lines_found, out.torn_bytes) == (0, 0)
        assert out.append([_record("a", "b"), _record("c", "d", "", "fallback_empty")]) == 2
        assert out.holds("b", "a") and not out.holds("a", "c")
        with pytest.raises(ValueError, match="pair b -> a is in"):
            out.append([_record("b", "a")])
    with TripletFile.open(path) as again:
        assert again.lines_found == 2 and again.holds("d", "c") and again.pairings == ["random"]
    assert [(t["reference_id"], t["outcome"]) for t in read_triplets(path)] == [
        ("a", "parsed"),
        ("c", "fallback_empty"),
    ]


def test_a_torn_last_line_is_dropped_so_its_pair_is_written_again(tmp_path: Path) -> None:
    path = tmp_path / "triplets.jsonl"
    whole = _record("a", "b").line() + _record("c", "d").line()
    torn = _record("e", "f").line()[:37]
    path.write_text(whole + torn, encoding="utf-8")
    with TripletFile.open(path) as out:
        assert (out.lines_found, out.torn_bytes) == (2, len(torn.encode()))
        assert not out.holds("e", "f")
        out.append([_record("e", "f")])
    assert path.read_text(encoding="utf-8") == whole + _record("e", "f").line()


@pytest.mark.parametrize("bad", ["not json\n", '{"reference_id": "x"}\n', "[1, 2]\n"])
def test_a_whole_line_that_is_not_a_triplet_stops_the_resume(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "triplets.jsonl"
    path.write_text(_record("a", "b").line() + bad + _record("c", "d").line(), encoding="utf-8")
    with pytest.raises(TripletUsageError, match=f"line 2 of {path} is not a triplet"):
        TripletFile.open(path)


def test_an_output_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TripletUsageError, match="is a folder; name the JSONL file"):
        TripletFile.open(tmp_path)


def test_image_uris_become_local_paths(tmp_path: Path) -> None:
    file = tmp_path / "a b%.png"
    entry = GalleryEntry("a", file.as_uri())
    assert image_path(entry, None) == file and written_uri(entry) == str(file)
    relative = GalleryEntry("r", "shapes/red.png")
    assert image_path(relative, tmp_path) == tmp_path / "shapes/red.png"
    assert written_uri(relative) == "shapes/red.png"  # relative to the trainer's --images-root
    for uri, message in [
        ("https://example.com/a.png", "is not a local file"),
        ("file://otherhost/a.png", "is on host otherhost"),
        ("", "has no uri"),
    ]:
        with pytest.raises(TripletUsageError, match=message):
            image_path(GalleryEntry("x", uri), None)
