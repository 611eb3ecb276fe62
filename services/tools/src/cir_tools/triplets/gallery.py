"""The collection as the triplet job reads it: the retriever's export, and each image's file from its uri."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import grpc

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_common.vectors import vector_from_proto
from cir_tools.triplets.errors import TripletUsageError
from cir_tools.triplets.pairing import GalleryEntry

EXPORT_PAGE_SIZE = 256


def export_collection(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    collection: str,
    *,
    with_features: bool,
    timeout_s: float | None = None,
) -> list[GalleryEntry]:
    """Every image of `collection` (ids, uris, metadata; image features when `with_features`).

    A collection the retriever does not know is a TripletUsageError; other failures stay RpcErrors."""
    request = retriever_pb2.ExportGalleryFeaturesRequest(collection=collection, page_size=EXPORT_PAGE_SIZE)
    entries = []
    try:
        for page in stub.ExportGalleryFeatures(request, timeout=timeout_s):
            for image in page.images:
                feature = None
                if with_features and (image.image.values or image.image.packed_f32le):
                    feature = vector_from_proto(image.image, label=f"image {image.id!r} feature")
                entries.append(GalleryEntry(image.id, image.uri, dict(image.metadata), feature))
    except grpc.RpcError as error:
        # A failed call is also a grpc.Call: it has the status code and details.
        if error.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            details = error.details()  # type: ignore[attr-defined]
            raise TripletUsageError(
                f"--collection {collection!r}: {details} (`cir collections list` shows the collections; "
                "`cir index FOLDER --collection NAME` makes one)"
            ) from None
        raise
    return entries


def image_path(entry: GalleryEntry, images_root: Path | None) -> Path:
    """The local file of an image: a file:// uri's path, or a path (relative ones under `images_root`)."""
    uri = entry.uri
    if not uri:
        raise TripletUsageError(f"image {entry.id!r} has no uri: the job reads each image from its uri")
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise TripletUsageError(f"image {entry.id!r}: {uri} is on host {parts.netloc}, not a local file")
        return Path(url2pathname(parts.path))  # which also undoes the uri's %-escapes
    if len(parts.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise TripletUsageError(
            f"image {entry.id!r}: {uri} is not a local file; the job reads files (a path or file:// uri)"
        )
    path = Path(uri)
    return path if path.is_absolute() or images_root is None else images_root / path


def written_uri(entry: GalleryEntry) -> str:
    """The uri a triplet line carries: a file path, as the trainer reads it (a file:// uri becomes its
    path; a relative path stays relative, to the trainer's --images-root)."""
    return str(image_path(entry, None))


def read_image(entry: GalleryEntry, images_root: Path | None) -> bytes:
    path = image_path(entry, images_root)
    try:
        return path.read_bytes()
    except OSError as error:
        hint = "" if images_root is not None or path.is_absolute() else "; relative uris need --images-root"
        raise TripletUsageError(
            f"cannot read image {entry.id!r} from {path}: {error.strerror or error}{hint}"
        ) from None
