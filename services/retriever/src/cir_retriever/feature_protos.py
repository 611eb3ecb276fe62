"""Query and gallery features to and from protobuf (SearchResponse.features, ExportGalleryFeatures).

Both directions live here so that what the service sends and what the evaluation tooling reads back
cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2
from cir_common.vectors import vector_from_proto, vector_to_proto
from cir_retriever.gallery.types import GalleryFeatures
from cir_retriever.strategies import QueryInputs

PACKED = common_pb2.VECTOR_FORMAT_PACKED_F32


def _one(vec: np.ndarray | None) -> common_pb2.Vector | None:
    return None if vec is None else vector_to_proto(vec, PACKED)


def _rows(mat: np.ndarray | None) -> list[common_pb2.Vector]:
    return [] if mat is None else [vector_to_proto(row, PACKED) for row in mat]


def _read_one(msg: object, name: str) -> np.ndarray | None:
    return vector_from_proto(getattr(msg, name)) if msg.HasField(name) else None  # type: ignore[attr-defined]


def _read_rows(vectors: Sequence[common_pb2.Vector]) -> np.ndarray | None:
    return np.stack([vector_from_proto(v) for v in vectors]) if vectors else None


def query_features_to_proto(inputs: QueryInputs) -> retriever_pb2.QueryFeatures:
    return retriever_pb2.QueryFeatures(
        reference_image=_one(inputs.image),
        modification_text=_one(inputs.text),
        captioning_text=_one(inputs.captioning_text),
        pseudo_token_prompt=_one(inputs.pseudo_prompt),
        edited_captions=_rows(inputs.edits),
        reference_caption_slots=_rows(inputs.caption_slots),
        reference_captions=_rows(inputs.reference_captions),
    )


def query_features_from_proto(msg: retriever_pb2.QueryFeatures) -> QueryInputs:
    image = _read_one(msg, "reference_image")
    if image is None:
        raise ValueError("QueryFeatures.reference_image is missing: was return_features set on the request?")
    return QueryInputs(
        image=image,
        text=_read_one(msg, "modification_text"),
        captioning_text=_read_one(msg, "captioning_text"),
        pseudo_prompt=_read_one(msg, "pseudo_token_prompt"),
        edits=_read_rows(msg.edited_captions),
        caption_slots=_read_rows(msg.reference_caption_slots),
        reference_captions=_read_rows(msg.reference_captions),
    )


def gallery_page_to_proto(
    ids: Sequence[str], uris: Sequence[str], features: GalleryFeatures, rows: range, total: int
) -> retriever_pb2.ExportGalleryFeaturesResponse:
    return retriever_pb2.ExportGalleryFeaturesResponse(
        images=[
            retriever_pb2.GalleryImageFeatures(
                id=ids[r],
                uri=uris[r],
                image=vector_to_proto(features.t_v[r], PACKED),
                caption_mean=vector_to_proto(features.caption_mean[r], PACKED),
                caption_slots=_rows(features.caption_slots[r]),
            )
            for r in rows
        ],
        total=total,
    )


def gallery_images_from_proto(
    images: Sequence[retriever_pb2.GalleryImageFeatures],
) -> tuple[list[str], GalleryFeatures]:
    """Ids and the GalleryFeatures matrices of exported images (in the order given)."""
    if not images:
        raise ValueError("no gallery images to read")
    return [m.id for m in images], GalleryFeatures(
        t_v=np.stack([vector_from_proto(m.image) for m in images]),
        caption_mean=np.stack([vector_from_proto(m.caption_mean) for m in images]),
        caption_slots=np.stack([np.stack([vector_from_proto(v) for v in m.caption_slots]) for m in images]),
    )
