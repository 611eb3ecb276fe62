"""The triplets file: one JSON object per line, appended per batch, resumed after an interruption.

Each line (shared with the InstructCIR trainer, `cir train instructcir --triplets`):

    {"reference_id", "target_id", "reference_uri", "target_uri", "reference_caption", "target_caption",
     "text", "pairing", "outcome", "models": {"captioner": {"name", "revision"},
                                              "reasoner": {"name", "revision"}}}

`outcome` is the reasoner's parse outcome ("parsed", "fallback_empty", "fallback_error") or "no_caption"
when a caption came back empty and the reasoner was not asked; every line whose outcome is not "parsed"
has an empty `text`, and the trainer skips it. Such lines are kept: a resumed run does not ask again.

A run appends whole batches and flushes each; a run killed while writing leaves at most a torn last line
(no newline at its end), which `TripletFile.open` drops, so a rerun rewrites that pair.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cir_tools.triplets.errors import TripletUsageError
from cir_tools.triplets.pairing import unordered

PARSED = "parsed"
NO_CAPTION = "no_caption"
TRIPLET_KEYS = (
    "reference_id",
    "target_id",
    "reference_uri",
    "target_uri",
    "reference_caption",
    "target_caption",
    "text",
    "pairing",
    "outcome",
    "models",
)


@dataclass(frozen=True)
class ModelName:
    name: str
    revision: str

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "revision": self.revision}


@dataclass(frozen=True)
class TripletRecord:
    reference_id: str
    target_id: str
    reference_uri: str
    target_uri: str
    reference_caption: str
    target_caption: str
    text: str
    pairing: str
    outcome: str
    captioner: ModelName
    reasoner: ModelName

    def as_json(self) -> dict[str, Any]:
        return {
            "reference_id": self.reference_id,
            "target_id": self.target_id,
            "reference_uri": self.reference_uri,
            "target_uri": self.target_uri,
            "reference_caption": self.reference_caption,
            "target_caption": self.target_caption,
            "text": self.text,
            "pairing": self.pairing,
            "outcome": self.outcome,
            "models": {"captioner": self.captioner.as_json(), "reasoner": self.reasoner.as_json()},
        }

    def line(self) -> str:
        return json.dumps(self.as_json(), ensure_ascii=False) + "\n"


class TripletFile:
    """The output file opened for appending, knowing the pairs an earlier run wrote to it."""

    def __init__(self, path: Path, handle: TextIO, written: list[dict[str, Any]], torn_bytes: int) -> None:
        self.path = path
        self._handle = handle
        self._pairs = {unordered((line["reference_id"], line["target_id"])) for line in written}
        self.lines_found = len(written)
        self.pairings = sorted({str(line["pairing"]) for line in written})
        # Bytes of a torn last line dropped on open (0: the file ended with a whole line).
        self.torn_bytes = torn_bytes

    @classmethod
    def open(cls, path: Path) -> TripletFile:
        """Reads what `path` holds (nothing when it does not exist), drops a torn last line, and opens
        it to append. A whole line that is not a triplet is a TripletUsageError naming its number."""
        if path.is_dir():
            raise TripletUsageError(f"--out {path} is a folder; name the JSONL file to write")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = path.read_bytes() if path.exists() else b""
        whole = data.rfind(b"\n") + 1  # the end of the last complete line
        written = _parse_lines(path, data[:whole])
        if whole < len(data):
            with path.open("r+b") as handle:
                handle.truncate(whole)
        return cls(path, path.open("a", encoding="utf-8"), written, len(data) - whole)

    def holds(self, reference_id: str, target_id: str) -> bool:
        """Whether the file has this pair already, in either direction."""
        return unordered((reference_id, target_id)) in self._pairs

    def append(self, records: Iterable[TripletRecord]) -> int:
        """Writes the records' lines at once, flushed to disk; pairs the file holds are refused."""
        lines = []
        for record in records:
            key = unordered((record.reference_id, record.target_id))
            if key in self._pairs:
                raise ValueError(
                    f"pair {record.reference_id} -> {record.target_id} is in {self.path} already"
                )
            self._pairs.add(key)
            lines.append(record.line())
        self._handle.write("".join(lines))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return len(lines)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> TripletFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def read_triplets(path: Path) -> list[dict[str, Any]]:
    """Every whole line of a triplets file, parsed (a torn last line is left out)."""
    data = path.read_bytes()
    return _parse_lines(path, data[: data.rfind(b"\n") + 1])


def _parse_lines(path: Path, data: bytes) -> list[dict[str, Any]]:
    return [_parse_line(path, number, raw) for number, raw in enumerate(data.splitlines(), 1) if raw.strip()]


def _parse_line(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    try:
        line = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        line = None
    if not isinstance(line, dict) or not all(key in line for key in TRIPLET_KEYS):
        raise TripletUsageError(
            f"line {number} of {path} is not a triplet (a JSON object with {', '.join(TRIPLET_KEYS)}); "
            "write to another --out file, or fix or remove that line to resume into this one"
        )
    return line
