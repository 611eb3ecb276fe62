"""InstructCIR training data: the triplets JSONL `cir triplets` writes, its held-out split, and its images.

Each line is one object (reference_id, target_id, reference_uri, target_uri, reference_caption,
target_caption, text, pairing, outcome, models). Lines whose reasoner outcome is not "parsed" or whose text
is empty are skipped and counted. The held-out split depends only on the pair's ids (a hash), so it is the
same across runs, resumes and processes, and a pair never moves between the two sides when the file grows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cir_common.checksums import sha256_file

PARSED_OUTCOME = "parsed"
_REQUIRED_KEYS = ("reference_id", "target_id", "reference_uri", "target_uri", "text", "outcome")
_FILE_SCHEME = "file://"


@dataclass(frozen=True)
class Triplet:
    """One training example: the reference image, the reformulation text, and the image it describes."""

    reference_id: str
    target_id: str
    reference_uri: str
    target_uri: str
    text: str
    pairing: str = ""


@dataclass(frozen=True)
class TripletFile:
    """The usable triplets of a JSONL file, with how many lines were skipped and the file's identity."""

    path: Path
    triplets: list[Triplet]
    skipped: int
    sha256: str
    # The captioner/reasoner that made the first usable line (the `models` key), for the checkpoint.
    models: dict[str, Any]


def read_triplets(path: Path) -> TripletFile:
    """Parse `path`; ValueError naming the line for malformed JSON or a missing key."""
    if not path.is_file():
        raise ValueError(f"--triplets {path} does not exist; write one with `cir triplets`")
    triplets: list[Triplet] = []
    skipped = 0
    models: dict[str, Any] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"--triplets {path} line {number} is not JSON: {error.msg}") from error
        if not isinstance(record, dict):
            raise ValueError(
                f"--triplets {path} line {number}: expected an object, got {type(record).__name__}"
            )
        missing = [key for key in _REQUIRED_KEYS if key not in record]
        if missing:
            raise ValueError(
                f"--triplets {path} line {number} lacks {', '.join(missing)} (a `cir triplets` line has "
                f"{', '.join(_REQUIRED_KEYS)})"
            )
        text = str(record["text"] or "").strip()
        if record["outcome"] != PARSED_OUTCOME or not text:
            skipped += 1
            continue
        if not models and isinstance(record.get("models"), dict):
            models = record["models"]
        triplets.append(
            Triplet(
                reference_id=str(record["reference_id"]),
                target_id=str(record["target_id"]),
                reference_uri=str(record["reference_uri"]),
                target_uri=str(record["target_uri"]),
                text=text,
                pairing=str(record.get("pairing", "")),
            )
        )
    return TripletFile(path=path, triplets=triplets, skipped=skipped, sha256=sha256_file(path), models=models)


def pair_hash(triplet: Triplet) -> float:
    """A number in [0, 1) fixed by the (reference, target) ids: where the pair falls in the split."""
    digest = hashlib.sha256(f"{triplet.reference_id}\x1f{triplet.target_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_heldout(triplets: Sequence[Triplet], fraction: float) -> tuple[list[Triplet], list[Triplet]]:
    """(train, held out): pairs whose hash is below `fraction` are held out, keeping both sides non-empty
    when there are at least two triplets and 0 < fraction < 1 (a small file would otherwise often get none).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--heldout-fraction must be within [0, 1), got {fraction}")
    ranked = sorted(triplets, key=pair_hash)
    cut = sum(pair_hash(t) < fraction for t in ranked)
    if fraction > 0 and len(ranked) >= 2:
        cut = min(max(cut, 1), len(ranked) - 1)
    heldout, train = ranked[:cut], ranked[cut:]
    # File order within each side: the trainer's shuffling is what orders a run.
    order = {id(t): i for i, t in enumerate(triplets)}
    return sorted(train, key=lambda t: order[id(t)]), sorted(heldout, key=lambda t: order[id(t)])


def resolve_image(uri: str, images_root: Path | None) -> Path:
    """The file of a stored uri: a path (or file:// uri), absolute or relative to `images_root`."""
    path = Path(uri.removeprefix(_FILE_SCHEME)).expanduser()
    if not path.is_absolute():
        path = (images_root or Path.cwd()) / path
    return path


def check_images(triplets: Sequence[Triplet], images_root: Path | None) -> None:
    """ValueError listing (a few of) the images the triplets name that are not files."""
    uris = sorted({u for t in triplets for u in (t.reference_uri, t.target_uri)})
    missing = [u for u in uris if not resolve_image(u, images_root).is_file()]
    if missing:
        where = f"--images-root {images_root}" if images_root else "the current folder (no --images-root)"
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} triplet image(s) not found relative to {where}: {shown}")


class TripletImages(torch.utils.data.Dataset):
    """(reference pixels, instruction token ids, target pixels) per triplet, images read when asked for."""

    def __init__(
        self,
        triplets: Sequence[Triplet],
        tokens: torch.Tensor,
        transform: Callable[[Image.Image], torch.Tensor],
        images_root: Path | None,
    ) -> None:
        if len(tokens) != len(triplets):
            raise ValueError(f"{len(triplets)} triplets but {len(tokens)} tokenised texts")
        self.triplets = list(triplets)
        self.tokens = tokens
        self.transform = transform
        self.images_root = images_root

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        triplet = self.triplets[index]
        return self.pixels(triplet.reference_uri), self.tokens[index], self.pixels(triplet.target_uri)

    def pixels(self, uri: str) -> torch.Tensor:
        with Image.open(resolve_image(uri, self.images_root)) as image:
            return self.transform(image.convert("RGB"))
