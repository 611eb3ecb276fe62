"""Which image pairs become triplets: `random`, `knn` or `same-metadata:KEY` (method.md 4.2).

A plan is deterministic for a collection's content, a pairing, a count and a seed (images are taken in id
order, whatever order the store exported them in). No two pairs join the same two images (in either
direction) and no pair joins an image to itself. The count defaults to one pair per eligible image, and is
cut to the number of distinct pairs the pairing allows.

- random: any two different images, the direction drawn too.
- knn: each reference (in a seeded order) with one of its KNN_CANDIDATES nearest neighbours by image
  feature, drawn among those it is not yet paired with; further rounds when the count asks for more.
- same-metadata:KEY: two images with the same value of metadata KEY; images without KEY are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

import numpy as np

from cir_tools.triplets.errors import TripletUsageError


class PairingKind(StrEnum):
    RANDOM = "random"
    KNN = "knn"
    SAME_METADATA = "same-metadata"


PAIRING_FORMS = "random, knn or same-metadata:KEY"
# Nearest neighbours a knn reference draws its target from.
KNN_CANDIDATES = 5
# Up to this many possible pairs, all are listed and shuffled; above it (a list would take hundreds of
# megabytes) pairs are drawn one by one and repeats rejected.
_LISTED_PAIRS = 200_000
# Rows of the similarity matrix computed at once (rows x images floats).
_SIMILARITY_ROWS = 256


@dataclass(frozen=True)
class PairingSpec:
    kind: PairingKind
    key: str = ""  # same-metadata only

    @property
    def label(self) -> str:
        """The form the user wrote, and what each triplet's `pairing` says: "same-metadata:category"."""
        return f"{self.kind}:{self.key}" if self.kind is PairingKind.SAME_METADATA else str(self.kind)


def parse_pairing(text: str) -> PairingSpec:
    """`--pairs` to a PairingSpec; a TripletUsageError naming the accepted forms otherwise (its message
    starts with the text, as argparse puts it after "argument --pairs:")."""
    kind_text, colon, argument = text.strip().partition(":")
    try:
        kind = PairingKind(kind_text)
    except ValueError:
        raise TripletUsageError(f"{text!r} is not a pairing; write {PAIRING_FORMS}") from None
    if kind is PairingKind.SAME_METADATA:
        key = argument.strip()
        if not key:
            raise TripletUsageError(
                f"{text!r} names no metadata key: write same-metadata:KEY, e.g. same-metadata:category; "
                f"pairings: {PAIRING_FORMS}"
            )
        return PairingSpec(kind, key)
    if colon:
        raise TripletUsageError(f"{text!r}: {kind} takes no argument; write {PAIRING_FORMS}")
    return PairingSpec(kind)


@dataclass(frozen=True)
class GalleryEntry:
    """One image of the collection as the pairing sees it."""

    id: str
    uri: str
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The L2-normalised image feature (knn); None when not read or not stored.
    feature: np.ndarray | None = None


class ImagePair(NamedTuple):
    reference_id: str
    target_id: str


@dataclass(frozen=True)
class PairPlan:
    pairs: list[ImagePair]
    # Distinct pairs the pairing allows on this collection (the most a count can get).
    available: int
    # Images left out: same-metadata, those without the key.
    skipped_images: int = 0


def plan_pairs(
    entries: Sequence[GalleryEntry], spec: PairingSpec, count: int | None, seed: int, collection: str = ""
) -> PairPlan:
    """The pairs of `entries` for `spec`: `count` of them (None: one per eligible image), fewer when the
    pairing allows fewer."""
    if count is not None and count < 1:
        raise TripletUsageError(f"--count {count}: ask for at least 1 pair")
    where = f"collection {collection!r}" if collection else "the collection"
    ordered = sorted(entries, key=lambda entry: entry.id)
    if len({entry.id for entry in ordered}) != len(ordered):
        raise ValueError("the gallery lists an image id twice")
    if len(ordered) < 2:
        raise TripletUsageError(f"{where} has {len(ordered)} image(s); a pair needs at least two")
    rng = np.random.default_rng(seed)
    if spec.kind is PairingKind.RANDOM:
        return _random_pairs(ordered, count, rng)
    if spec.kind is PairingKind.KNN:
        return _knn_pairs(ordered, count, rng, where)
    return _same_metadata_pairs(ordered, spec.key, count, rng, where)


def _random_pairs(entries: Sequence[GalleryEntry], count: int | None, rng: np.random.Generator) -> PairPlan:
    n = len(entries)
    available = n * (n - 1) // 2
    wanted = min(n if count is None else count, available)

    def listed() -> list[tuple[int, int]]:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]

    def draw() -> tuple[int, int]:
        i, j = (int(x) for x in rng.integers(n, size=2))
        return i, j

    indices = _distinct_pairs(rng, available, wanted, listed, draw)
    return PairPlan([_ids(entries, i, j) for i, j in indices], available)


def _same_metadata_pairs(
    entries: Sequence[GalleryEntry], key: str, count: int | None, rng: np.random.Generator, where: str
) -> PairPlan:
    groups: dict[str, list[int]] = {}
    skipped = 0
    for index, entry in enumerate(entries):
        value = entry.metadata.get(key, "")
        if value == "":
            skipped += 1
        else:
            groups.setdefault(value, []).append(index)
    shared = [members for _, members in sorted(groups.items()) if len(members) >= 2]
    available = sum(len(members) * (len(members) - 1) // 2 for members in shared)
    if available == 0:
        raise TripletUsageError(
            f"--pairs same-metadata:{key}: no two images of {where} share a value of {key!r} "
            f"({len(entries) - skipped} of {len(entries)} images have the key); choose another key, "
            "or --pairs random or knn"
        )
    eligible = [index for members in shared for index in members]
    group_of = {index: members for members in shared for index in members}
    wanted = min(len(eligible) if count is None else count, available)

    def listed() -> list[tuple[int, int]]:
        return [(a, b) for members in shared for x, a in enumerate(members) for b in members[x + 1 :]]

    def draw() -> tuple[int, int]:
        reference = eligible[int(rng.integers(len(eligible)))]
        members = group_of[reference]
        return reference, members[int(rng.integers(len(members)))]

    indices = _distinct_pairs(rng, available, wanted, listed, draw)
    return PairPlan([_ids(entries, i, j) for i, j in indices], available, skipped)


def _distinct_pairs(
    rng: np.random.Generator,
    available: int,
    wanted: int,
    listed: Callable[[], list[tuple[int, int]]],
    draw: Callable[[], tuple[int, int]],
) -> list[tuple[int, int]]:
    """`wanted` distinct unordered pairs, each in a drawn direction: from the shuffled list of all
    `available` pairs when there are few, else drawn one by one, repeats rejected."""
    if available <= _LISTED_PAIRS:
        every = listed()
        chosen = rng.permutation(len(every))[:wanted]
        flips = rng.integers(2, size=wanted)
        return [every[c][::-1] if flip else every[c] for c, flip in zip(chosen, flips, strict=True)]
    seen: set[tuple[int, int]] = set()
    pairs = []
    while len(pairs) < wanted:
        i, j = draw()
        unordered = (min(i, j), max(i, j))
        if i == j or unordered in seen:
            continue
        seen.add(unordered)
        pairs.append((i, j))
    return pairs


def _knn_pairs(
    entries: Sequence[GalleryEntry], count: int | None, rng: np.random.Generator, where: str
) -> PairPlan:
    missing = sum(entry.feature is None for entry in entries)
    if missing:
        raise TripletUsageError(
            f"--pairs knn needs every image's feature; {missing} of {len(entries)} images of {where} have "
            "none. Use --pairs random or same-metadata:KEY"
        )
    features = np.stack([np.asarray(entry.feature, dtype=np.float32) for entry in entries])
    neighbours = _nearest(features, min(KNN_CANDIDATES, len(entries) - 1))
    available = len({(min(i, j), max(i, j)) for i in range(len(entries)) for j in neighbours[i]})
    wanted = min(len(entries) if count is None else count, available)
    order = rng.permutation(len(entries))
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < wanted:  # a round gives each reference one more neighbour
        for reference in order:
            free = [
                int(j) for j in neighbours[reference] if (min(reference, j), max(reference, j)) not in seen
            ]
            if not free:
                continue
            target = free[int(rng.integers(len(free)))]
            seen.add((min(int(reference), target), max(int(reference), target)))
            pairs.append((int(reference), target))
            if len(pairs) == wanted:
                break
    return PairPlan([_ids(entries, i, j) for i, j in pairs], available)


def _nearest(features: np.ndarray, k: int) -> list[list[int]]:
    """Each row's k most cosine-similar other rows, nearest first (ties: the lower index, so equal
    features rank in id order on every run)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    if not np.all(np.isfinite(features)) or np.any(norms == 0):
        raise TripletUsageError("--pairs knn: some image features are zero or not finite; use --pairs random")
    unit = features / norms
    result: list[list[int]] = []
    for start in range(0, len(unit), _SIMILARITY_ROWS):
        block = unit[start : start + _SIMILARITY_ROWS] @ unit.T
        for row, similarities in enumerate(block):
            similarities[start + row] = -math.inf  # never itself
            result.append([int(j) for j in np.argsort(-similarities, kind="stable")[:k]])
    return result


def _ids(entries: Sequence[GalleryEntry], i: int, j: int) -> ImagePair:
    return ImagePair(entries[i].id, entries[j].id)


def unordered(pair: tuple[str, str]) -> tuple[str, str]:
    """The key that makes (a, b) and (b, a) the same pair."""
    a, b = pair
    return (a, b) if a <= b else (b, a)


def iter_batches(pairs: Sequence[ImagePair], size: int) -> Iterator[list[ImagePair]]:
    for start in range(0, len(pairs), size):
        yield list(pairs[start : start + size])
