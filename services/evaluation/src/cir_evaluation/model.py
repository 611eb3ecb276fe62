"""The records every part of the evaluation shares: a dataset split, its queries, and what a run produced.

Ids are the dataset's own image ids (CIRCO: the COCO id as a decimal string; CIRR: the image name;
FashionIQ: the ASIN), so rankings, ground truths and submission files all speak the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class DatasetName(StrEnum):
    CIRCO = "circo"
    CIRR = "cirr"
    FASHIONIQ = "fashioniq"


class Split(StrEnum):
    VAL = "val"
    TEST = "test"


FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")


@dataclass(frozen=True)
class GalleryItem:
    id: str
    path: Path


@dataclass(frozen=True)
class Query:
    """One composed query. Ground-truth fields are empty on test splits (the answers are withheld)."""

    id: str  # CIRCO: annotation id; CIRR: pairid; FashionIQ: "<category>/<index in the captions file>"
    reference_id: str
    text: str  # the modification text as the strategy receives it (FashionIQ: the two captions joined)
    target_id: str = ""  # CIRCO target_img_id; CIRR target_hard; FashionIQ target
    ground_truth: tuple[str, ...] = ()  # CIRCO gt_img_ids; CIRR and FashionIQ: (target,)
    subset: tuple[str, ...] = ()  # CIRR img_set.members (the reference among them)
    semantic_aspects: tuple[str, ...] = ()  # CIRCO val
    shared_concept: str = ""  # CIRCO
    category: str = ""  # FashionIQ: dress / shirt / toptee; the gallery it is ranked against


@dataclass(frozen=True)
class EvalSplit:
    """A dataset split ready to evaluate: its galleries and its queries.

    CIRCO and CIRR have one gallery (key ""); FashionIQ one per category (keys as in FASHIONIQ_CATEGORIES),
    each query ranked against `galleries[query.category]`.
    """

    dataset: DatasetName
    split: Split
    root: Path
    galleries: dict[str, tuple[GalleryItem, ...]]
    queries: tuple[Query, ...]

    def gallery_for(self, query: Query) -> tuple[GalleryItem, ...]:
        return self.galleries[query.category]

    def image_path(self, image_id: str, category: str = "") -> Path | None:
        for item in self.galleries.get(category, ()):
            if item.id == image_id:
                return item.path
        return None


@dataclass
class QueryOutcome:
    """What one query produced: the ranking (best first, unique ids) and the model outputs behind it."""

    query_id: str
    ranking: list[str]
    scores: list[float]
    captions: list[str] = field(default_factory=list)
    edited_captions: list[str] = field(default_factory=list)
    added_objects: str = ""
    degradations: list[str] = field(default_factory=list)
