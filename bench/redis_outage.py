"""Throughput through a Redis outage: the same search loop with Redis up, killed mid-load, and not configured.

  .venv/bin/python bench/redis_outage.py --out bench/results/redis_outage.json

Runs the four services with the tiny pack on this machine (or `--profile`), indexes a small gallery, and keeps
`--concurrency` callers busy (closed loop) with a small fixed set of searches: a few reference images and
texts, so once warm every stage is answered from the cache, as for popular queries in production. With
Redis: `--seconds` of load, then Redis is killed (SIGKILL) while the callers keep going, for another
`--seconds`. Then a second suite without Redis (the in-process LRU only) runs the same loop. The target
(issue 14) is ok_per_s_down within a factor 2 of ok_per_s_none.

A search counts as OK when it was answered (status OK, within `--deadline`) with no degradation beyond the
ones the same search had with Redis up (a tiny random LLM's answer can be empty: a flagged fallback).
Writes JSON with exactly `ok_per_s_up`, `ok_per_s_down`, `ok_per_s_none`; details go to stdout.
`measure_redis_outage` is what bench/overload_bench.py calls.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from PIL import Image, ImageDraw

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import connect, index_folder, search_request
from cir_common.vocabulary import RETRIEVER
from cir_tools.local_suite import LocalSuite
from cir_tools.packs.tiny import build_tiny_pack
from cir_tools.termination import exit_on_sigterm

COLLECTION = "redis-outage"


def _square(colour: tuple[int, int, int], size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (240, 240, 236))
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=colour)
    return image


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _gallery(folder: Path, count: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        _square((15 * i % 256, 255 - 12 * i, 90 + 5 * i)).save(folder / f"g{i:02d}.png")
    return folder


def _requests(strategy: str, images: int, texts: Sequence[str]) -> list[retriever_pb2.SearchRequest]:
    out = []
    for i, text in itertools.product(range(images), texts):
        request = search_request(COLLECTION, text, strategy=strategy, top_k=10)
        request.reference_image.data = _png(_square((200, (60 * i) % 256, 40 + 30 * i)))
        out.append(request)
    return out


def _stages(response: retriever_pb2.SearchResponse) -> tuple[str, ...]:
    return tuple(sorted(d.stage for d in response.degradations))


@dataclass(frozen=True)
class Phase:
    ok_per_s: float
    codes: dict[str, int]  # OK, DEGRADED (a degradation the outage added), or the gRPC status
    median_ok_ms: float | None


@dataclass
class Outcomes:
    """Completed searches, each with the time it ended: a phase is a window of end times."""

    ended: list[tuple[float, str, float]] = field(default_factory=list)  # (end, status, latency s)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def window(self, start: float, end: float) -> Phase:
        with self.lock:
            inside = [(status, latency) for ended, status, latency in self.ended if start <= ended < end]
        ok = [latency for status, latency in inside if status == "OK"]
        return Phase(
            ok_per_s=round(len(ok) / (end - start), 3),
            codes=dict(Counter(status for status, _ in inside)),
            median_ok_ms=round(1000 * statistics.median(ok), 1) if ok else None,
        )


def _load(
    address: str,
    requests: Sequence[retriever_pb2.SearchRequest],
    baseline: Sequence[tuple[str, ...]],
    concurrency: int,
    deadline_s: float,
    seconds: float,
    kill_redis: LocalSuite | None = None,
) -> dict[str, Phase]:
    """Closed-loop load for `seconds` (twice that with `kill_redis`: Redis is killed half-way, mid-load)."""
    stub = connect(address)
    outcomes = Outcomes()
    turn = itertools.count()
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            index = next(turn) % len(requests)
            started = time.monotonic()
            try:
                response = stub.Search(requests[index], timeout=deadline_s)
                # An answer with a degradation the outage added (a stage that fell back) is not OK.
                status = "OK" if _stages(response) == baseline[index] else "DEGRADED"
            except grpc.RpcError as error:
                status = error.code().name
            ended = time.monotonic()
            with outcomes.lock:
                outcomes.ended.append((ended, status, ended - started))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    phases: dict[str, Phase] = {}
    time.sleep(seconds)
    if kill_redis is not None:
        middle = time.monotonic()
        assert kill_redis.redis is not None
        kill_redis.redis.kill()
        time.sleep(seconds)
        end = time.monotonic()
        phases["up"] = outcomes.window(start, middle)
        phases["down"] = outcomes.window(middle, end)
    else:
        end = time.monotonic()
        phases["none"] = outcomes.window(start, end)
    stop.set()
    for thread in threads:
        thread.join(timeout=deadline_s + 10)
    return phases


def _suite_phases(
    profile: Path,
    workdir: Path,
    use_redis: bool,
    requests: Sequence[retriever_pb2.SearchRequest],
    concurrency: int,
    deadline_s: float,
    seconds: float,
) -> dict[str, Phase]:
    # What is measured is the cache path: the searches repeat, so every stage is answered from a cache. The
    # tiny profile's admission of generative searches (one at a time, sized for uncached ones) would measure
    # the gate instead, so it is opened here; bench/overload_bench.py measures the gate.
    open_gate = {
        f"{RETRIEVER.env_prefix}MAX_CONCURRENT_GENERATIVE_SEARCHES": "64",
        f"{RETRIEVER.env_prefix}MAX_QUEUED_GENERATIVE_SEARCHES": "128",
    }
    suite = LocalSuite(profile=profile, workdir=workdir, use_redis=use_redis, extra_env=open_gate)
    suite.start(timeout_s=600)
    try:
        if use_redis and suite.redis is None:
            raise RuntimeError("redis-server is not on PATH; run scripts/install-dev.sh")
        stub = connect(suite.retriever_address)
        index_folder(stub, COLLECTION, _gallery(workdir / "gallery"))
        # Warm: every stage of every search computed once (and cached), untimed; what each degrades anyway.
        with ThreadPoolExecutor(concurrency) as pool:
            baseline = list(pool.map(lambda r: _stages(stub.Search(r, timeout=600)), requests))
        return _load(
            suite.retriever_address,
            requests,
            baseline,
            concurrency,
            deadline_s,
            seconds,
            kill_redis=suite if use_redis else None,
        )
    finally:
        suite.stop()


def measure_redis_outage(
    profile: Path,
    workdir: Path,
    *,
    strategy: str = "cvsi",
    concurrency: int = 8,
    seconds: float = 15.0,
    deadline_s: float = 30.0,
    images: int = 4,
    texts: Sequence[str] = ("in blue", "larger"),
    details: dict[str, object] | None = None,
) -> dict[str, float]:
    """OK searches per second with Redis up, with Redis killed mid-load, and with no Redis configured.

    Starts two suites in turn under `workdir` (one with Redis, one without) and stops both. `details`, when
    given, receives each phase's status counts and median latency.
    """
    requests = _requests(strategy, images, texts)
    with_redis = _suite_phases(
        profile, Path(workdir) / "with-redis", True, requests, concurrency, deadline_s, seconds
    )
    without = _suite_phases(
        profile, Path(workdir) / "no-redis", False, requests, concurrency, deadline_s, seconds
    )
    phases = {**with_redis, **without}
    if details is not None:
        details.update(
            {
                "strategy": strategy,
                "concurrency": concurrency,
                "seconds_per_phase": seconds,
                "deadline_s": deadline_s,
                "distinct_searches": len(requests),
                "phases": {name: asdict(phase) for name, phase in phases.items()},
            }
        )
    return {f"ok_per_s_{name}": phases[name].ok_per_s for name in ("up", "down", "none")}


def main() -> None:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/redis_outage.json")
    parser.add_argument("--profile", help="profile.toml of a model pack (default: build the tiny pack)")
    parser.add_argument("--strategy", default="cvsi")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0, help="per phase")
    parser.add_argument("--deadline", type=float, default=30.0, help="per-search deadline (s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cir-redis-outage-") as tmp:
        profile = Path(args.profile) if args.profile else build_tiny_pack(Path(tmp) / "pack", echo=None)
        details: dict[str, object] = {}
        result = measure_redis_outage(
            profile,
            Path(tmp) / "outage",
            strategy=args.strategy,
            concurrency=args.concurrency,
            seconds=args.seconds,
            deadline_s=args.deadline,
            details=details,
        )
    print(json.dumps(details, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}: {json.dumps(result)}")


if __name__ == "__main__":
    main()
