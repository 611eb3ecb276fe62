"""What a gallery store holds and answers, as plain types: no strategy code, no protos, no engine.

Both backends (`local`, `milvus`) take and return these; the retriever core builds them from the
strategies' output and the gRPC layer converts them to and from messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from typing import TypeVar

import numpy as np

from cir_common.errors import InvalidArgument
from cir_common.vocabulary import DecodingVariant, Preprocessing
from cir_retriever.fusion import ScoreFunction

E = TypeVar("E", bound=StrEnum)

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


class AnnIndex(StrEnum):
    """Approximate search a collection may ask for; EXACT (empty, the default) searches exactly."""

    EXACT = ""
    HNSW = "hnsw"
    IVF = "ivf"


# Most captions per image a collection may ask for.
MAX_NUM_CAPTIONS = 64


@dataclass
class CollectionSettings:
    """A collection's settings. Choices given as strings (a request, a stored manifest) become their enums;
    an unknown one is the caller's error. None (or "") for a choice, and 0 for num_captions, leave it to the
    server's default (`Retriever.with_defaults`)."""

    num_captions: int = 15
    decoding_variant: DecodingVariant | None = DecodingVariant.BEAM_SAMPLE
    preprocessing: Preprocessing | None = Preprocessing.TARGETPAD
    # Metadata keys a search may filter on, with their types; fixed at creation.
    filterable_fields: tuple[FilterableField, ...] = ()
    # Approximate search for this collection (exact by default).
    ann: AnnIndex = AnnIndex.EXACT

    def __post_init__(self) -> None:
        self.decoding_variant = _choice("decoding_variant", self.decoding_variant, DecodingVariant)
        self.preprocessing = _choice("preprocessing", self.preprocessing, Preprocessing)
        try:
            self.ann = AnnIndex(self.ann)
        except ValueError:
            raise InvalidArgument(
                f"settings.ann {str(self.ann)[:64]!r} is unknown: leave it empty (exact search) or use "
                f"{' or '.join(m.value for m in AnnIndex if m)}"
            ) from None


def _choice(name: str, value: str | None, choices: type[E]) -> E | None:
    """`value` as one of `choices`; None for an empty one (the server's default)."""
    if not value:
        return None
    try:
        return choices(value)
    except ValueError:
        raise InvalidArgument(
            f"settings.{name} {str(value)[:64]!r} is unknown: {' or '.join(m.value for m in choices)}"
        ) from None


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
    # The InstructCIR checkpoint whose target embeddings every image keeps, and their dimension; empty / 0
    # when the images were indexed without one (fixed with the encoder, at the first write).
    instructcir: dict[str, str] = field(default_factory=dict)
    instructcir_dim: int = 0


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
    # The normalised InstructCIR target embedding (d_i,) when the collection keeps that column, else None.
    instructcir_target: np.ndarray | None = None


@dataclass(frozen=True)
class GalleryFeatures:
    """What the store keeps per image, as matrices over a set of images (one row each)."""

    t_v: np.ndarray  # (n, d) normalised image features
    caption_mean: np.ndarray  # (n, d) mean of normalised caption features, not renormalised
    caption_slots: np.ndarray  # (n, R, d) raw features of the first R captions
    # (n, d_i) normalised InstructCIR target embeddings; None when the collection keeps none
    instructcir_target: np.ndarray | None = None


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
    INSTRUCTCIR = "instructcir"  # the normalised InstructCIR target embeddings (their own dimension d_i)


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


def settings_to_dict(settings: CollectionSettings) -> dict:
    """CollectionSettings as plain values (choices as their strings): what a message shows of them."""
    return asdict(settings, dict_factory=lambda items: {k: _plain(v) for k, v in items})


def _plain(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


def settings_from_dict(data: dict) -> CollectionSettings:
    """CollectionSettings from its JSON form (as `dataclasses.asdict` wrote it)."""
    fields = tuple(
        FilterableField(f["name"], FieldType(f["type"])) for f in data.get("filterable_fields", ())
    )
    return CollectionSettings(**{**data, "filterable_fields": fields})
