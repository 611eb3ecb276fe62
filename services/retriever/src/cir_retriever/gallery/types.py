"""What a gallery store holds and answers, as plain types: no strategy code, no protos, no engine.

Both backends (`local`, `milvus`) take and return these; the retriever core builds them from the
strategies' output and the gRPC layer converts them to and from messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from cir_retriever.fusion import ScoreFunction

# --- collections ----------------------------------------------------------------------------------------


class FieldType(StrEnum):
    """Types a filterable metadata field may declare (metadata values arrive as strings and are parsed)."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"


@dataclass(frozen=True)
class FilterableField:
    name: str
    type: FieldType


@dataclass
class CollectionSettings:
    num_captions: int = 15
    decoding_variant: str = "beam_sample"
    preprocessing: str = "targetpad"
    # Metadata keys a search may filter on, with their types; fixed at creation.
    filterable_fields: tuple[FilterableField, ...] = ()
    # Approximate search for this collection: "" (exact, the default), "hnsw" or "ivf".
    ann: str = ""


@dataclass
class Manifest:
    name: str
    settings: CollectionSettings
    created_at: str
    updated_at: str
    embedding_dim: int = 0
    # ModelIdentity fields of the models that produced the vectors; empty until the first ingest.
    encoder: dict[str, str] = field(default_factory=dict)
    captioner: dict[str, str] = field(default_factory=dict)


# --- images ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRecord:
    id: str
    uri: str
    metadata: dict[str, str]
    content_sha256: str
    captions: list[str]
    image_raw: np.ndarray  # raw CLIP image embedding (d,)
    caption_mean: np.ndarray  # mean of normalised caption features (d,), not renormalised
    caption_slots: np.ndarray  # raw features of the first R captions (R, d)


@dataclass(frozen=True)
class GalleryFeatures:
    """What the store keeps per image, as matrices over a set of images (one row each)."""

    t_v: np.ndarray  # (n, d) normalised image features
    caption_mean: np.ndarray  # (n, d) mean of normalised caption features, not renormalised
    caption_slots: np.ndarray  # (n, R, d) raw features of the first R captions


@dataclass(frozen=True)
class FeaturePage:
    """One page of an export, in id order: everything stored, so that an import of it is a full copy."""

    ids: list[str]
    uris: list[str]
    features: GalleryFeatures
    total: int  # images in the collection when the export started
    image_raw: np.ndarray | None = None  # (n, d) raw image features (a backend that stores them fills this)
    captions: list[list[str]] = field(default_factory=list)
    content_sha256: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)


# --- search ---------------------------------------------------------------------------------------------


class GalleryKind(StrEnum):
    IMAGE = "image"  # t_v
    CVSI = "cvsi"  # gamma*t_c + (1-gamma)*t_v, then as the score function needs
    WEIMOCIR_CODED = "weimocir_coded"  # [normalize(C_1..C_R), t_v]
    WEIMOCIR_PAPER = "weimocir_paper"  # (1-b)*t_v + b*mean_r normalize(C_r)


@dataclass(frozen=True)
class GallerySpec:
    """Which gallery vectors a query vector is scored against (row n scores image n); hashable."""

    kind: GalleryKind
    gamma: float = 0.0
    caption_features_renormalized: bool = False
    score: ScoreFunction = ScoreFunction.DOT
    weimocir_b: float = 0.0


@dataclass(frozen=True)
class Equals:
    """field == value (string and bool fields)."""

    value: str | bool


@dataclass(frozen=True)
class AnyOf:
    """field in values (string and bool fields); never empty."""

    values: tuple[str | bool, ...]


@dataclass(frozen=True)
class Range:
    """Bounds on a number field; None = open on that side."""

    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


@dataclass(frozen=True)
class Condition:
    field: str
    test: Equals | AnyOf | Range


@dataclass(frozen=True)
class Filter:
    """Conditions AND-ed; an image without a value for a field matches no condition on it."""

    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    uri: str
    metadata: dict[str, str]


def settings_from_dict(data: dict) -> CollectionSettings:
    """CollectionSettings from its JSON form (as `dataclasses.asdict` wrote it)."""
    fields = tuple(
        FilterableField(f["name"], FieldType(f["type"])) for f in data.get("filterable_fields", ())
    )
    return CollectionSettings(**{**data, "filterable_fields": fields})
