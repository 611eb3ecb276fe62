"""Captioner throughput on CPU with the tiny pack's BLIP-2.

  .venv/bin/python bench/captioner_bench.py --out bench/results/captioner.json

1. Engine throughput (captions/s) for both decoding variants, N = 1, 5, 15 captions per image and
   batch sizes up to 16 images per generate call (unseeded, so a batch is one generate call).
2. One end-to-end figure: the service over loopback gRPC, C callers each sending single-image requests
   with the server's default decoding, cache bypassed: captions/s, latency percentiles, mean batch size.

Random weights rarely emit an end-of-sequence token, so every caption runs to its full 30 tokens: the
figures are the cost of maximum-length captions, an upper bound for a trained model.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import torch
from PIL import Image

from cir.captioner.v1 import captioner_pb2, captioner_pb2_grpc
from cir.common.v1 import common_pb2
from cir_captioner.core import build_engine
from cir_captioner.decoding import DecodingOverrides, resolve_decoding
from cir_captioner.engine import CaptionEngine
from cir_captioner.service import CaptionerServicer
from cir_captioner.settings import ENV_PREFIX, SECTION, CaptionerSettings
from cir_common.cache import MemoryCache
from cir_common.config import load_settings
from cir_common.server import ServiceHost
from cir_common.vocabulary import CAPTIONER, DecodingVariant, Precision
from cir_tools.packs.tiny import build_tiny_pack

SERVICE_NAME = CAPTIONER.grpc_name


def _images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (240, 320), (300, 300), (640, 200)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % 4] for i in range(count))
    ]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _seconds_per_call(
    run: Callable[[], object], min_seconds: float, min_calls: int = 3
) -> tuple[float, float]:
    """(best, median) seconds per call. The CPU is shared, so the best call estimates the model's own cost."""
    run()  # warm-up: first calls with a new shape allocate and pick kernels
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_seconds:
        call_started = time.perf_counter()
        run()
        times.append(time.perf_counter() - call_started)
    return min(times), statistics.median(times)


def engine_throughput(
    engine: CaptionEngine, settings: CaptionerSettings, batch_sizes: list[int], min_seconds: float
) -> list[dict]:
    defaults, limits = settings.decoding_defaults(), settings.decoding_limits()
    rows = []
    for variant in DecodingVariant:
        for n in (1, 5, 15):
            params = resolve_decoding(DecodingOverrides(variant=variant), n, defaults, limits)
            for batch in batch_sizes:
                images = _images(batch)
                best, median = _seconds_per_call(lambda p=params, i=images: engine.caption(p, i), min_seconds)
                row = {
                    "variant": variant.value,
                    "num_captions": n,
                    "num_beams": params.num_beams,
                    "batch_images": batch,
                    "seconds_per_call_best": round(best, 4),
                    "seconds_per_call_median": round(median, 4),
                    "images_per_s": round(batch / best, 2),
                    "captions_per_s": round(batch * n / best, 2),
                    "captions_per_s_median": round(batch * n / median, 2),
                }
                rows.append(row)
                print(
                    f"  {variant.value:11s} N={n:2d} batch {batch:2d}: "
                    f"{row['captions_per_s']:8.1f} captions/s ({row['images_per_s']:6.2f} images/s)",
                    flush=True,
                )
    return rows


async def end_to_end(settings: CaptionerSettings, concurrency: int, requests_each: int) -> dict:
    settings.port = 0
    host = ServiceHost([SERVICE_NAME], settings, display_name="captioner-bench")
    servicer = CaptionerServicer(settings, cache=MemoryCache(1024))
    captioner_pb2_grpc.add_CaptionerServiceServicer_to_server(servicer, host.server)
    port = await host.start()
    await servicer.load()
    await host.set_ready()
    payloads = [_png(image) for image in _images(concurrency * requests_each, seed=1)]
    latencies: list[float] = []
    captions = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = captioner_pb2_grpc.CaptionerServiceStub(channel)

        async def caller(index: int) -> None:
            nonlocal captions
            for j in range(requests_each):
                request = captioner_pb2.GenerateCaptionsRequest(
                    images=[common_pb2.Image(data=payloads[index * requests_each + j])], bypass_cache=True
                )
                started = time.perf_counter()
                response = await stub.GenerateCaptions(request)
                latencies.append((time.perf_counter() - started) * 1000.0)
                captions += sum(len(r.captions) for r in response.results)

        await caller(0)  # warm-up
        latencies.clear()
        captions = 0
        before = servicer.core.stats().batching
        batches_before = before.batches if before else 0
        items_before = before.items if before else 0
        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    stats = servicer.core.stats().batching
    await host.stop()
    latencies.sort()
    batches = stats.batches - batches_before if stats else 0
    return {
        "variant": settings.default_variant,
        "num_captions": settings.default_num_captions,
        "batch_window_ms": settings.batch_window_ms,
        "concurrency": concurrency,
        "requests": len(latencies),
        "captions_per_s": round(captions / elapsed, 2),
        "images_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms_p50": round(statistics.median(latencies), 1),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
        "mean_batch_images": round((stats.items - items_before) / batches, 2) if stats and batches else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/captioner.json")
    parser.add_argument("--min-seconds", type=float, default=0.3, help="measuring time per throughput point")
    parser.add_argument(
        "--batch-sizes", default="1,2,4,8,16", help="images per generate call, comma-separated"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="callers in the end-to-end run")
    # The tiny model's ops are too small to gain from intra-op threads, and on a shared CPU several threads
    # wait on each other at every op: one thread gives steadier figures (and faster ones here).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started = time.perf_counter()
    results: dict = {
        "command": " ".join(["python", *sys.argv]),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        profile = build_tiny_pack(Path(tmp) / "pack", echo=None)
        settings = load_settings(
            CaptionerSettings, section=SECTION, env_prefix=ENV_PREFIX, profile=profile, environ={}
        )
        settings.device, settings.dtype = "cpu", Precision.FP32
        engine = build_engine(settings)
        results["model"] = {"identity": engine.identity, "image_size": list(engine.blip2.image_size)}
        print("tiny BLIP-2: engine throughput", flush=True)
        results["engine"] = engine_throughput(engine, settings, batch_sizes, args.min_seconds)
        del engine
        print("tiny BLIP-2: end-to-end gRPC", flush=True)
        row = asyncio.run(end_to_end(settings, args.concurrency, requests_each=4))
        print(f"  {row}", flush=True)
        results["end_to_end"] = row
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out} in {results['bench_seconds']} s")


if __name__ == "__main__":
    main()
