"""Ingestion decodes each image off the event loop, and each item keeps its own outcome.

The retriever runs on loopback with its model services down (nothing listens at their addresses): the
validation under test happens before any model call, and a valid image then fails alone, as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from retriever_support import RunningRetriever, start_retriever

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2
from cir_common.images import DecodedImage, ImageLimits
from cir_retriever import core
from cir_retriever.settings import RetrieverSettings
from cir_tools.local_redis import free_port


def _settings_with_models_down(tmp_path, **overrides: Any) -> RetrieverSettings:
    """A retriever whose three model services are down (nothing listens at their addresses)."""
    down = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    return RetrieverSettings(
        store_dir=str(tmp_path / "collections"),
        encoder_address=down[0],
        captioner_address=down[1],
        reasoner_address=down[2],
        **overrides,
    )


@pytest.fixture
def retriever(tmp_path) -> Iterator[RunningRetriever]:
    running = start_retriever(_settings_with_models_down(tmp_path))
    yield running
    running.stop()


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_ingest_decodes_off_the_event_loop_and_keeps_per_item_outcomes(retriever, monkeypatch):
    decoded_in: list[tuple[str, bool]] = []  # (label, an event loop runs in the decoding thread)
    real_decode = core.decode_image

    def observed_decode(data: bytes, limits: ImageLimits, **kwargs: Any) -> DecodedImage:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        decoded_in.append((kwargs.get("label", ""), on_loop))
        return real_decode(data, limits, **kwargs)

    # Observes the real decoder where the retriever calls it; the decoding itself is unchanged.
    monkeypatch.setattr(core, "decode_image", observed_decode)

    images = {"good": _png((64, 48)), "broken": b"\x89PNG\r\n\x1a\n not really", "large": _png((900, 700))}
    requests = [
        retriever_pb2.IngestImagesRequest(
            collection="scratch",
            image=retriever_pb2.GalleryImage(id=image_id, image=common_pb2.Image(data=data)),
        )
        for image_id, data in images.items()
    ]
    items = {
        e.item.id: e.item
        for e in retriever.stub.IngestImages(iter(requests), timeout=60)
        if e.HasField("item")
    }

    # The broken one may already be refused by the header probe that sizes its decode-budget reservation.
    assert {label for label, _ in decoded_in} >= {"image 'good'", "image 'large'"}
    assert [label for label, on_loop in decoded_in if on_loop] == [], "an image was decoded on the event loop"
    broken = items["broken"]
    assert broken.status == retriever_pb2.ITEM_STATUS_FAILED and broken.error_code == "INVALID_ARGUMENT"
    assert "image 'broken'" in broken.error_message
    for image_id in ("good", "large"):  # valid: they reached the (absent) model services, each on its own
        assert items[image_id].status == retriever_pb2.ITEM_STATUS_FAILED
        assert items[image_id].error_code == "UNAVAILABLE", items[image_id]


def test_a_collection_created_by_its_first_ingest_gets_the_servers_defaults(tmp_path):
    settings = _settings_with_models_down(
        tmp_path,
        default_num_captions=3,
        default_decoding_variant="nucleus",
        default_preprocessing="model_default",
    )
    running = start_retriever(settings)
    try:
        request = retriever_pb2.IngestImagesRequest(
            collection="implicit",
            image=retriever_pb2.GalleryImage(id="a", image=common_pb2.Image(data=_png((32, 32)))),
        )
        list(running.stub.IngestImages(iter([request]), timeout=60))  # the item fails: no model service
        info = running.stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(collection="implicit"))
    finally:
        running.stop()
    assert info.settings.num_captions == 3
    assert info.settings.decoding_variant == "nucleus"
    assert info.settings.preprocessing == "model_default"
