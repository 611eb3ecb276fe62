"""The model-calling half of an evaluation: gallery ingestion and queries through the running suite.

Everything goes through the retriever's public API (IngestImages, ExportGalleryFeatures, Search), the
same path product callers use. Both halves resume: ingested ids are journaled, finished queries cached.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_client.retriever import connect
from cir_evaluation.feature_cache import IngestJournal, QueryCache, QueryRecord
from cir_evaluation.model import EvalSplit, GalleryItem, Query
from cir_evaluation.rescoring import Gallery
from cir_retriever.conversions import gallery_images_from_proto, query_features_from_proto
from cir_retriever.gallery.types import GalleryFeatures

Echo = Callable[[str], None]
# Images per IngestImages stream: the journal is written when a stream ends, so an interruption
# costs at most this many images.
_INGEST_CHUNK = 256


class EvalRunError(RuntimeError):
    """The run could not complete; what finished is cached and a re-run resumes from there."""

    @classmethod
    def listing(cls, summary: str, items: Sequence[str], shown: int = 20) -> EvalRunError:
        more = f"\n  ... and {len(items) - shown} more" if len(items) > shown else ""
        return cls(summary + ":\n  " + "\n  ".join(items[:shown]) + more)


def collection_name(prefix: str, split: EvalSplit, key: str) -> str:
    parts = [prefix, split.dataset.value, split.split.value, key]
    return "-".join(p for p in parts if p)


# Starts a local suite for a run without --address: (profile or None for the starter's default models, work
# folder, echo) -> a context manager yielding the retriever's address, stopping the suite on exit. The `cir`
# command passes one (cir_tools.local_suite); evaluation itself only ever talks to a retriever address.
SuiteStarter = Callable[[Path | None, Path, Echo], contextlib.AbstractContextManager[str]]


@contextlib.contextmanager
def retriever_stub(
    address: str | None, profile: Path | None, workdir: Path, echo: Echo, start_suite: SuiteStarter | None
) -> Iterator[retriever_pb2_grpc.RetrieverServiceStub]:
    """A stub to the suite at `address`, or to a local suite `start_suite` runs for the duration."""
    if address:
        yield connect(address)
        return
    if start_suite is None:
        raise EvalRunError("no retriever address: give --address HOST:PORT of a running suite")
    with start_suite(profile, workdir, echo) as local_address:
        yield connect(local_address)


def _requests(collection: str, items: Sequence[GalleryItem]) -> Iterator[retriever_pb2.IngestImagesRequest]:
    for item in items:
        yield retriever_pb2.IngestImagesRequest(
            collection=collection,
            image=retriever_pb2.GalleryImage(
                id=item.id, image=common_pb2.Image(data=item.path.read_bytes()), uri=item.path.as_uri()
            ),
        )


def ingest_gallery(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    collection: str,
    items: Sequence[GalleryItem],
    out: Path,
    echo: Echo,
) -> int:
    """Ingests the images the journal does not list; returns how many were sent this time."""
    journal = IngestJournal(out, collection)
    done = journal.done()
    todo = [item for item in items if item.id not in done]
    echo(f"{collection}: {len(items) - len(todo)} of {len(items)} images already ingested, {len(todo)} to go")
    failures: list[str] = []
    for start in range(0, len(todo), _INGEST_CHUNK):
        committed: list[str] = []
        for event in stub.IngestImages(_requests(collection, todo[start : start + _INGEST_CHUNK])):
            if not event.HasField("item"):
                continue
            if event.item.status == retriever_pb2.ITEM_STATUS_FAILED:
                failures.append(f"{event.item.id}: {event.item.error_code} {event.item.error_message}")
            else:
                committed.append(event.item.id)
        journal.add(committed)
        echo(f"{collection}: {len(done) + start + len(committed)} / {len(items)} ingested")
    if failures:
        raise EvalRunError.listing(
            f"{len(failures)} gallery image(s) of {collection} failed to ingest; metrics over an incomplete "
            "gallery would not compare with published ones",
            failures,
        )
    return len(todo)


def export_gallery(stub: retriever_pb2_grpc.RetrieverServiceStub, collection: str) -> Gallery:
    # Decoded page by page: a 123k-image gallery's messages are never all held at once.
    ids: list[str] = []
    parts: list[GalleryFeatures] = []
    for page in stub.ExportGalleryFeatures(retriever_pb2.ExportGalleryFeaturesRequest(collection=collection)):
        page_ids, page_features = gallery_images_from_proto(page.images)
        ids += page_ids
        parts.append(page_features)
    if not parts:
        raise ValueError(f"collection {collection!r} exported no images")
    targets = [p.instructcir_target for p in parts]
    return Gallery(
        ids=ids,
        features=GalleryFeatures(
            t_v=np.concatenate([p.t_v for p in parts]),
            caption_mean=np.concatenate([p.caption_mean for p in parts]),
            caption_slots=np.concatenate([p.caption_slots for p in parts]),
            # the collection's InstructCIR targets, when it keeps them (every page then carries them)
            instructcir_target=None if any(t is None for t in targets) else np.concatenate(targets),  # type: ignore[arg-type]
        ),
    )


@dataclass(frozen=True)
class SearchTemplate:
    """What every query of the run shares: strategy, preset, weights, options, how many hits."""

    strategy: int
    preset: int
    weights: retriever_pb2.Weights
    options: retriever_pb2.StrategyOptions
    top_k: int
    timeout_s: float

    def request(
        self, collection: str, query: Query, reference_image: bytes | None = None
    ) -> retriever_pb2.SearchRequest:
        """The query's search; by its reference id, or with the reference's bytes when given (instructcir
        embeds the reference image with the text, and the retriever keeps no image bytes)."""
        reference = (
            {"reference_image": common_pb2.Image(data=reference_image)}
            if reference_image is not None
            else {"reference_id": query.reference_id}
        )
        return retriever_pb2.SearchRequest(
            collection=collection,
            **reference,
            modification_text=query.text,
            strategy=self.strategy,
            preset=self.preset,
            weights=self.weights,
            options=self.options,
            top_k=self.top_k,
            explain=True,
            return_features=True,
        )


def record_from_response(query_id: str, response: retriever_pb2.SearchResponse) -> QueryRecord:
    explanation = response.explanation
    return QueryRecord(
        query_id=query_id,
        service_ranking=[hit.id for hit in response.hits],
        service_scores=[hit.score for hit in response.hits],
        inputs=query_features_from_proto(response.features),
        captions=list(explanation.captions),
        edited_captions=list(explanation.edited_captions),
        added_objects=explanation.added_objects,
        prompt=explanation.fine_grained_prompt,
        degradations=[f"{d.stage}: {d.reason} -> {d.effect}" for d in response.degradations],
    )


def run_queries(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    queries: Sequence[Query],
    collections: dict[str, str],
    template: SearchTemplate,
    cache: QueryCache,
    concurrency: int,
    echo: Echo,
    reference_paths: Mapping[str, Path] | None = None,
) -> None:
    """Searches every query the cache lacks, `concurrency` at a time, appending each as it finishes.

    With `reference_paths` (gallery id -> image file), each reference is sent as its image bytes."""
    cached = cache.ids()
    todo = [q for q in queries if q.id not in cached]
    echo(f"queries: {len(queries) - len(todo)} cached, {len(todo)} to run ({concurrency} at a time)")
    lock = threading.Lock()
    failures: list[str] = []

    def one(query: Query) -> None:
        image = None if reference_paths is None else reference_paths[query.reference_id].read_bytes()
        request = template.request(collections[query.category], query, image)
        response = stub.Search(request, timeout=template.timeout_s)
        record = record_from_response(query.id, response)
        with lock:
            cache.append(record)

    finished = 0
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(one, query): query for query in todo}
        for future in as_completed(futures):
            finished += 1
            error = future.exception()
            if isinstance(error, grpc.RpcError):
                failures.append(f"{futures[future].id}: {error.code().name} {error.details()}")  # type: ignore[attr-defined]
            elif error is not None:
                raise error
            if finished % 25 == 0 or finished == len(todo):
                echo(f"queries: {finished} / {len(todo)} done, {len(failures)} failed")
    if failures:
        raise EvalRunError.listing(
            f"{len(failures)} of {len(todo)} queries failed (the rest are cached: run again to retry these)",
            failures,
        )


def print_echo(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
