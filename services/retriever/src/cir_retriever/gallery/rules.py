"""What every gallery backend checks and derives the same way: collection names, timestamps, the encoder a
collection was indexed with, and the records of one write batch."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from cir_common.errors import FailedPrecondition, InvalidArgument, NotFound
from cir_retriever.gallery.filters import TypedValue, typed_metadata
from cir_retriever.gallery.types import FilterableField, ImageRecord, Manifest

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def validate_collection_name(name: str) -> str:
    # fullmatch: a `$` would also accept a trailing newline ("probe\n" as a second collection).
    if not _NAME.fullmatch(name or ""):
        raise InvalidArgument(
            f"collection name {name[:140]!r} is not valid: use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def collection_not_found(name: str) -> NotFound:
    """The NOT_FOUND for an unknown collection: it says how to list them, and lists none (a caller may not be
    allowed to see other collections' names)."""
    return NotFound(
        f"collection {name[:140]!r} does not exist; list the collections with ListCollections "
        "(cir collections list)"
    )


def now() -> str:
    """A manifest timestamp (RFC 3339, UTC, seconds)."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_same_encoder(
    manifest: Manifest,
    encoder: dict[str, str],
    dim: int,
    instructcir: dict[str, str] | None = None,
    instructcir_dim: int = 0,
) -> None:
    """FailedPrecondition when the collection holds another encoder's vectors: they do not compare. Likewise
    for the InstructCIR target column: a write must bring the targets of the checkpoint the collection keeps,
    and none to a collection that keeps none (`instructcir` empty / None: the write carries no targets)."""
    if manifest.encoder and (manifest.encoder, manifest.embedding_dim) != (encoder, dim):
        raise FailedPrecondition(
            f"collection {manifest.name!r} was indexed with encoder {_describe(manifest.encoder)} "
            f"(dim {manifest.embedding_dim}), but the encoder now serving is {_describe(encoder)} "
            f"(dim {dim}); use the original encoder or index into a new collection"
        )
    brought = (dict(instructcir or {}), instructcir_dim if instructcir else 0)
    if not manifest.encoder or (manifest.instructcir, manifest.instructcir_dim) == brought:
        return
    if not manifest.instructcir:
        raise FailedPrecondition(
            f"collection {manifest.name!r} keeps no InstructCIR target embeddings (its images were indexed "
            f"without them), but this write brings those of {_describe(brought[0])}: import them into a new "
            "collection"
        )
    made_by = f"{_describe(brought[0])} (dim {brought[1]})" if brought[0] else "no checkpoint"
    raise FailedPrecondition(
        f"collection {manifest.name!r} keeps the InstructCIR targets of {_describe(manifest.instructcir)} "
        f"(dim {manifest.instructcir_dim}) for every image, but these were made by {made_by}: serve that "
        "checkpoint again (the encoder's instructcir_checkpoint) or index into a new collection"
    )


def _describe(identity: dict[str, str]) -> str:
    return f"{identity.get('name', '?')}@{identity.get('revision', '?')[:12]}"


def last_of_each_id(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """A batch naming one id twice keeps its last record (the later write wins, as two batches would)."""
    last = {r.id: i for i, r in enumerate(records)}
    return [records[i] for i in sorted(last.values())]


def typed_record_metadata(record: ImageRecord, fields: Sequence[FilterableField]) -> dict[str, TypedValue]:
    """The record's declared filterable values, typed; InvalidArgument naming the image."""
    try:
        return typed_metadata(record.metadata, fields)
    except InvalidArgument as error:
        raise InvalidArgument(f"image {record.id[:128]!r}: {error.message}") from None


def check_targets(records: Sequence[ImageRecord], name: str, instructcir_dim: int) -> None:
    """Every record carries an InstructCIR target of the collection's dimension when it keeps them (dim > 0),
    and none when it does not: the column is whole or absent, never partial."""
    for r in records:
        target = r.instructcir_target
        if instructcir_dim and (target is None or target.shape != (instructcir_dim,)):
            shown = "none" if target is None else f"shape {target.shape}"
            raise InvalidArgument(
                f"image {r.id[:128]!r}: its InstructCIR target has {shown}; collection {name!r} keeps one of "
                f"dimension {instructcir_dim} for every image"
            )
        if not instructcir_dim and target is not None:
            raise InvalidArgument(
                f"image {r.id[:128]!r} carries an InstructCIR target, but collection {name!r} keeps none "
                "(record the checkpoint with the models at its first write)"
            )


def check_shapes(records: Sequence[ImageRecord], dim: int, slots: int) -> None:
    """One dimension and one caption-slot count per collection (search matrices and vector fields have fixed
    widths)."""
    for r in records:
        target = r.instructcir_target
        if target is not None and (target.ndim != 1 or not target.size):
            raise InvalidArgument(f"image {r.id[:128]!r}: its InstructCIR target has shape {target.shape}")
        shapes = (r.image_raw.shape, r.caption_mean.shape, r.caption_slots.shape)
        if shapes != ((dim,), (dim,), (slots, dim)):
            raise InvalidArgument(
                f"image {r.id[:128]!r}: vectors of shapes image {r.image_raw.shape}, caption mean "
                f"{r.caption_mean.shape}, caption slots {r.caption_slots.shape}; this collection holds "
                f"({dim},), ({dim},) and ({slots}, {dim})"
            )
