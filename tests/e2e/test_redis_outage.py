"""A Redis outage under load: searches keep succeeding, cache calls stop, and the suite reconnects by itself.

The four services run on a real Redis. Mid-load the test kills Redis (SIGKILL) and takes its port with a
listener that accepts connections and never answers: a hung Redis, the harder case, where every call that
still reached for it would wait out its timeout. The listener reads what each connection sends, so the test
counts the cache calls that reached "Redis" (MGET, SET) apart from the breakers' background probes (PING).
No service exposes its cache stats over RPC yet, so this is the count from outside; nothing is timed.
Then Redis is restarted on the same port and the services must use it again without being restarted.
"""

from __future__ import annotations

import io
import itertools
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from PIL import Image, ImageDraw

from cir.captioner.v1 import captioner_pb2, captioner_pb2_grpc
from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir.reasoner.v1 import reasoner_pb2, reasoner_pb2_grpc
from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import connect, index_folder, search_request
from cir_tools.local_redis import start_redis
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow

COLLECTION = "outage"
CONCURRENCY = 4
CACHED_SERVICES = ("encoder", "captioner", "reasoner")  # the retriever keeps no cache
OPENED = "cache unavailable, serving from the in-process cache"
CLOSED = "cache available again"
# Bounds for waiting on a state, never measurements: generous for a loaded CI machine.
WAIT_BOUND_S = 120.0


@pytest.fixture(scope="module")
def suite(tiny_pack, tmp_path_factory):
    suite = LocalSuite(profile=tiny_pack, workdir=tmp_path_factory.mktemp("outage"), use_redis=True)
    suite.start(timeout_s=400)
    yield suite
    suite.stop()


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _square(colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (64, 64), (240, 240, 236))
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill=colour)
    return image


class HungRedis:
    """Holds a dead Redis's port like a hung server: accepts every connection, reads it, never answers.

    Each connection's first command is kept (our client sends it at once: RESP2, no handshake), so cache
    calls (MGET, SET) can be told from the breakers' probes (PING).
    """

    _COMMAND = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")

    def __init__(self, port: int) -> None:
        self._server = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: the port was just freed
        self._server.setblocking(False)
        self._lock = threading.Lock()
        self._received: list[bytearray] = []  # per connection, in the order they were accepted
        self._open: dict[socket.socket, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hung-redis", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._pump(0.05)

    def _pump(self, timeout_s: float) -> bool:
        """Accepts and reads whatever is ready; False when nothing was."""
        ready, _, _ = select.select([self._server, *self._open], [], [], timeout_s)
        for sock in ready:
            if sock is self._server:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                self._open[conn] = len(self._received)
                self._received.append(bytearray())
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                self._received[self._open[sock]] += data
            else:  # the client gave up on us (its timeout) and closed
                del self._open[sock]
                sock.close()
        return bool(ready)

    def commands(self) -> list[str]:
        """The first command of every connection so far, after reading everything already sent."""
        with self._lock:
            while self._pump(0):
                pass
            found = [self._COMMAND.match(bytes(data)) for data in self._received]
        return [m.group(1).decode().upper() if m else "" for m in found]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for conn in self._open:
                conn.close()
            self._open.clear()
            self._server.close()


class Load:
    """CONCURRENCY callers sending searches from `requests` in turn until stopped; outcomes are kept."""

    def __init__(self, stub, requests: Sequence[retriever_pb2.SearchRequest]) -> None:
        self._stub = stub
        self._requests = requests
        self._next = itertools.count()
        self._stop = threading.Event()
        self._done = threading.Condition()
        self.outcomes: list[tuple[int, str, list[str]]] = []  # (index in requests, status, degraded stages)
        self._threads = [threading.Thread(target=self._caller, daemon=True) for _ in range(CONCURRENCY)]
        for thread in self._threads:
            thread.start()

    def _caller(self) -> None:
        while not self._stop.is_set():
            index = next(self._next) % len(self._requests)
            try:
                response = self._stub.Search(self._requests[index], timeout=120)
                outcome = (index, "OK", _stages(response))
            except grpc.RpcError as error:
                outcome = (index, error.code().name, [])
            with self._done:
                self.outcomes.append(outcome)
                self._done.notify_all()

    def wait_for(self, count: int) -> None:
        with self._done:
            if not self._done.wait_for(lambda: len(self.outcomes) >= count, timeout=WAIT_BOUND_S):
                pytest.fail(f"only {len(self.outcomes)} of {count} searches finished within {WAIT_BOUND_S} s")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WAIT_BOUND_S)


def _stages(response: retriever_pb2.SearchResponse) -> list[str]:
    return sorted(d.stage for d in response.degradations)


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_BOUND_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {WAIT_BOUND_S:.0f} s waiting for {what}")
        time.sleep(0.05)


class Services:
    """Direct calls to the three cached services, each answering whether its result came from the cache."""

    def __init__(self, suite: LocalSuite) -> None:
        self._channels = {n: grpc.insecure_channel(suite.processes[n].address) for n in CACHED_SERVICES}
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(self._channels["encoder"])
        self.captioner = captioner_pb2_grpc.CaptionerServiceStub(self._channels["captioner"])
        self.reasoner = reasoner_pb2_grpc.ReasonerServiceStub(self._channels["reasoner"])

    def cache_hits(self, text: str, image: bytes) -> tuple[bool, bool, bool]:
        embedded = self.encoder.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=[text]), timeout=60)
        captioned = self.captioner.GenerateCaptions(
            captioner_pb2.GenerateCaptionsRequest(images=[common_pb2.Image(data=image)], num_captions=2),
            timeout=60,
        )
        edited = self.reasoner.EditCaptions(
            reasoner_pb2.EditCaptionsRequest(captions=["a square"], instruction=text), timeout=60
        )
        return (embedded.embeddings[0].cache_hit, captioned.results[0].cache_hit, edited.edits[0].cache_hit)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()


def _kinds(client: redis.Redis) -> set[str]:
    """The kinds of value in Redis (cir:v1:<kind>:...): which services have written to it."""
    return {key.split(b":")[2].decode() for key in client.scan_iter(match="cir:*", count=1000)}


def _settled(client: redis.Redis, at_least: int = 0) -> int:
    """The number of keys in Redis once it is at least `at_least` and has not changed for half a second:
    the services store what they computed in the background (write-behind), a moment after they answer."""
    last, since = client.dbsize(), time.monotonic()
    deadline = since + WAIT_BOUND_S
    while last < at_least or time.monotonic() - since < 0.5:
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {WAIT_BOUND_S:.0f} s waiting for Redis to hold {at_least} keys")
        time.sleep(0.05)
        now = client.dbsize()
        if now != last:
            last, since = now, time.monotonic()
    return last


def _breaker_changes(log_path: Path) -> list[str]:
    """A service's breaker opening and closing, as its cache logged them."""
    text = log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if OPENED in line or CLOSED in line]


def _reconnected(suite: LocalSuite) -> bool:
    """Every cached service's breaker opened and its last change was closing again."""
    changes = [_breaker_changes(suite.processes[name].log_path) for name in CACHED_SERVICES]
    return all(lines and any(OPENED in line for line in lines) and CLOSED in lines[-1] for lines in changes)


def test_searches_ride_out_a_redis_outage_and_the_suite_reconnects(suite, tmp_path):
    assert suite.redis is not None, "this test needs redis-server (scripts/install-dev.sh)"
    port = suite.redis.port
    stub = connect(suite.retriever_address)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for i in range(8):
        _square((30 * i, 200 - 20 * i, 90)).save(gallery / f"g{i}.png")
    assert index_folder(stub, COLLECTION, gallery).counts == {"indexed": 8}
    queries = [_png(_square((200, 80 * i, 60))) for i in range(2)]
    mix = []
    for image, text, strategy in itertools.product(queries, ("in blue", "larger"), ("cvsi", "image_only")):
        request = search_request(COLLECTION, text, strategy=strategy, top_k=4)
        request.reference_image.data = image
        mix.append(request)
    # Every stage of every search in the mix is now in Redis. Some searches degrade even so (a tiny random
    # LLM's answer can be empty, a flagged fallback): the outage must not add any degradation.
    with ThreadPoolExecutor(CONCURRENCY) as pool:  # at once: the reasoner batches them
        degraded = list(pool.map(lambda request: _stages(stub.Search(request, timeout=120)), mix))
    services = Services(suite)
    client = redis.Redis(host="127.0.0.1", port=port)
    hung: HungRedis | None = None
    # Inputs of the direct calls, apart from the mix's (other images, other texts).
    before_image, during_image, after_image = (_png(_square((i, 2 * i, 3 * i))) for i in (1, 2, 3))
    try:
        _settled(client)  # the mix's results are written behind its answers
        kinds_before = _kinds(client)
        assert {"clip_image", "blip2_captions"} <= kinds_before, kinds_before
        assert any(kind.startswith("reasoner") for kind in kinds_before), kinds_before
        assert services.cache_hits("before the outage", before_image) == (False, False, False)

        load = Load(stub, mix)
        try:
            load.wait_for(len(mix))
            suite.redis.kill()  # mid-load
            hung = HungRedis(port)
            load.wait_for(len(load.outcomes) + 4 * len(mix))
        finally:
            load.stop()
        assert {status for _, status, _ in load.outcomes} == {"OK"}
        changed = [(i, stages) for i, _, stages in load.outcomes if stages != degraded[i]]
        assert not changed, f"searches degraded by the outage: {changed} (before it: {degraded})"

        # Every breaker is open by now (each service failed far more than three calls in a row). The same
        # work again, and calls made before and during the outage: answered from the in-process cache...
        before = len(hung.commands())
        assert services.cache_hits("before the outage", before_image) == (True, True, True)
        assert services.cache_hits("during the outage", during_image) == (False, False, False)
        assert services.cache_hits("during the outage", during_image) == (True, True, True)
        assert [_stages(stub.Search(request, timeout=120)) for request in mix] == degraded
        # ...with no cache call reaching for Redis: only the breakers' background probes.
        _wait_until(lambda: hung.commands()[before:].count("PING") >= 1, "a background probe")
        assert set(hung.commands()[before:]) == {"PING"}, hung.commands()[before:]

        # Redis is back on its port (empty): the services find it by themselves and use it again.
        hung.close()
        hung = None
        suite.redis.stop()
        suite.redis = start_redis(port)
        client.close()
        client = redis.Redis(host="127.0.0.1", port=port)
        _wait_until(lambda: _reconnected(suite), "every service to find Redis again")
        # A search with a reference image nothing has seen: its embedding is computed and written to the
        # restarted Redis. The captions and texts a tiny random model makes from it may repeat ones an
        # in-process cache still holds (a hit there writes nothing), so the other services' writes are shown
        # by the direct calls below, on inputs nothing has seen.
        request = search_request(COLLECTION, "a fresh edit", strategy="cvsi", top_k=4)
        noise = np.random.default_rng(3).integers(0, 256, (48, 48, 3), np.uint8)
        request.reference_image.data = _png(Image.fromarray(noise))
        stub.Search(request, timeout=120)
        _wait_until(lambda: "clip_image" in _kinds(client), "the new embedding to reach Redis")
        written = _settled(client)
        assert services.cache_hits("after the outage", after_image) == (False, False, False)
        _settled(client, written + 3)  # each service's new result has reached Redis
        hits = int(client.info("stats")["keyspace_hits"])
        assert services.cache_hits("after the outage", after_image) == (True, True, True)
        assert int(client.info("stats")["keyspace_hits"]) >= hits + 3  # read from Redis: one per service
        kinds_after = _kinds(client)
        assert {"clip_image", "clip_text", "blip2_captions"} <= kinds_after, kinds_after
        assert any(kind.startswith("reasoner") for kind in kinds_after), kinds_after
    finally:
        if hung is not None:
            hung.close()
        client.close()
        services.close()
