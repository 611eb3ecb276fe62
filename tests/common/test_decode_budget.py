"""The process-wide budget of decoded image bytes, on a real encoder server (tiny CLIP) over loopback gRPC."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import grpc
import pytest
from PIL import Image
from support.profiles import settings_from_profile
from support.server_thread import ServerThread

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.cache import MemoryCache
from cir_common.server import RETRY_AFTER_HEADER
from cir_encoder.__main__ import SERVICE_NAME
from cir_encoder.service import EncoderServicer
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings

BIG_SIDE = 1500
BIG_BYTES = BIG_SIDE * BIG_SIDE * 4  # an RGB PNG decodes to four bytes a pixel in Pillow
# Room for one big image and a few small ones, not two big ones.
CAPACITY = BIG_BYTES + 3_000_000


def _png(side: int, colour: tuple[int, int, int]) -> common_pb2.Image:
    # One colour: a few KB on the wire, megabytes once decoded (the shape of the 47 KB bombs).
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, format="PNG")
    return common_pb2.Image(data=buffer.getvalue())


def _request(*images: common_pb2.Image) -> encoder_pb2.EmbedImagesRequest:
    return encoder_pb2.EmbedImagesRequest(images=images, bypass_cache=True)


@pytest.fixture(scope="module")
def encoder(tiny_pack):
    settings = settings_from_profile(
        EncoderSettings,
        SECTION,
        ENV_PREFIX,
        tiny_pack,
        port=0,
        max_decoded_image_bytes=CAPACITY,
        max_decoded_image_wait_s=120.0,  # the tests decide when room frees up, not a timer
    )
    servicer = EncoderServicer(settings, cache=MemoryCache(16 * 1024 * 1024))

    def register(host):
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
        return servicer.load

    server = ServerThread(SERVICE_NAME, settings, register)
    server.load_and_serve()
    channel = server.channel()
    server.servicer = servicer
    server.stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    yield server
    channel.close()
    server.stop()


@contextmanager
def _held(server: ServerThread, nbytes: int) -> Iterator[None]:
    """Takes `nbytes` of the server's budget (on its loop) for the block, as a request decoding would."""
    reservation = server.servicer.core.decode_budget.reserve(nbytes, label="the test's hold")
    server.call(reservation.__aenter__())
    try:
        yield
    finally:
        server.call(reservation.__aexit__(None, None, None))


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + 60  # a state, with a generous bound: no assumption on the machine's speed
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached: {what}")
        time.sleep(0.01)


def test_a_request_waits_for_room_while_small_images_are_still_served(encoder):
    budget = encoder.servicer.core.decode_budget
    waited_before = budget.stats.waited
    with ThreadPoolExecutor(max_workers=1) as pool:
        with _held(encoder, BIG_BYTES):
            small = encoder.stub.EmbedImages(_request(_png(64, (0, 200, 0))), timeout=60)
            assert len(small.embeddings) == 1  # fits beside the hold: served at once

            big = pool.submit(encoder.stub.EmbedImages, _request(_png(BIG_SIDE, (200, 0, 0))), timeout=120)
            _wait_until(lambda: budget.waiting == 1, "the big request waiting for room")
            assert not big.done()
        assert len(big.result(timeout=120).embeddings) == 1  # served once the hold was released
    _wait_until(lambda: budget.in_use_bytes == 0, "the budget back to zero")
    assert budget.stats.waited == waited_before + 1


def test_a_request_that_finds_no_room_in_time_is_resource_exhausted(encoder):
    budget = encoder.servicer.core.decode_budget
    with _held(encoder, BIG_BYTES):
        budget.max_wait_s = 0.05
        try:
            with pytest.raises(grpc.RpcError) as err:
                encoder.stub.EmbedImages(_request(_png(BIG_SIDE, (0, 0, 200))), timeout=60)
        finally:
            budget.max_wait_s = 120.0
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details().startswith("images[0]: about 8.6 MiB once decoded")
    assert "CIR_ENCODER_MAX_DECODED_IMAGE_BYTES" in err.value.details()
    assert "CIR_ENCODER_MAX_DECODED_IMAGE_WAIT_S" in err.value.details()
    assert int(dict(err.value.trailing_metadata())[RETRY_AFTER_HEADER]) >= 50
    _wait_until(lambda: budget.in_use_bytes == 0, "the budget back to zero")


def test_images_larger_than_the_whole_budget_are_refused_at_once(encoder):
    budget = encoder.servicer.core.decode_budget
    with pytest.raises(grpc.RpcError) as err:
        encoder.stub.EmbedImages(_request(_png(2000, (9, 9, 9))), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CIR_ENCODER_MAX_DECODED_IMAGE_BYTES" in err.value.details()
    # Two images that fit one by one but not together: the request is refused as a whole, never half held.
    with pytest.raises(grpc.RpcError) as err:
        encoder.stub.EmbedImages(_request(_png(BIG_SIDE, (1, 2, 3)), _png(BIG_SIDE, (3, 2, 1))), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("the 2 images of images: about 17.2 MiB once decoded")
    assert budget.in_use_bytes == 0


def test_concurrent_big_images_stay_within_the_budget_and_are_all_served(encoder):
    budget = encoder.servicer.core.decode_budget
    before = budget.stats.reservations
    requests = [_request(_png(BIG_SIDE, (i * 20, 0, 0))) for i in range(6)]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(lambda r: encoder.stub.EmbedImages(r, timeout=120), requests))
    assert all(len(a.embeddings) == 1 for a in answers)
    _wait_until(lambda: budget.in_use_bytes == 0, "the budget back to zero")
    assert budget.stats.reservations == before + 6
    assert budget.stats.peak_bytes <= CAPACITY
    assert budget.waiting == 0
