"""Encoder throughput and batching-window latency, on CPU.

  .venv/bin/python bench/encoder_bench.py --out bench/results/encoder.json

1. Engine throughput (images/s, texts/s) against batch size, for the tiny pack's CLIP and for a
   randomly initialised ViT-B-32 (the real architecture, random weights, loaded from a local
   checkpoint through the production loader).
2. The service under concurrent load over loopback gRPC: C callers each sending single-image
   requests, for several batching windows: latency percentiles and throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import torch
from PIL import Image

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.cache import MemoryCache
from cir_common.config import load_settings
from cir_common.server import ServiceHost
from cir_common.vocabulary import ENCODER, Precision, Preprocessing
from cir_encoder.core import build_engine
from cir_encoder.engine import EncoderEngine
from cir_encoder.service import EncoderServicer
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings
from cir_tools.packs.tiny import build_tiny_pack


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


def _rate(run, items: int, min_seconds: float) -> float:
    run()  # warm-up
    done, started = 0, time.perf_counter()
    while True:
        run()
        done += items
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed


def engine_throughput(engine: EncoderEngine, batch_sizes: list[int], min_seconds: float) -> list[dict]:
    rows = []
    for batch in batch_sizes:
        images = _images(batch)
        texts = [f"a photo of a red dress number {i} on a beach at night" for i in range(batch)]
        image_rate = _rate(
            lambda images=images: engine.embed_images(Preprocessing.TARGETPAD, images), batch, min_seconds
        )
        text_rate = _rate(
            lambda texts=texts: engine.embed_texts(engine.tokenize(texts).ids), batch, min_seconds
        )
        rows.append(
            {"batch_size": batch, "images_per_s": round(image_rate, 2), "texts_per_s": round(text_rate, 2)}
        )
        print(f"  batch {batch:3d}: {image_rate:8.1f} images/s  {text_rate:8.1f} texts/s", flush=True)
    return rows


def _vit_b32_settings(workdir: Path) -> EncoderSettings:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = workdir / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return EncoderSettings(
        clip_model="ViT-B-32", clip_pretrained=str(path), device="cpu", precision=Precision.FP32
    )


async def _load_under_concurrency(settings: EncoderSettings, concurrency: int, requests_each: int) -> dict:
    settings.port = 0
    host = ServiceHost([ENCODER.grpc_name], settings, display_name="encoder-bench")
    servicer = EncoderServicer(settings, cache=MemoryCache(1024))
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
    port = await host.start()
    await servicer.load()
    await host.set_ready()
    payloads = [_png(image) for image in _images(concurrency * requests_each, seed=1)]
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)

        async def caller(index: int) -> None:
            for j in range(requests_each):
                data = payloads[index * requests_each + j]
                request = encoder_pb2.EmbedImagesRequest(
                    images=[common_pb2.Image(data=data)], bypass_cache=True
                )
                started = time.perf_counter()
                await stub.EmbedImages(request)
                latencies.append((time.perf_counter() - started) * 1000.0)

        await caller(0)  # warm-up
        latencies.clear()
        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    stats = servicer.core.stats().images
    await host.stop()
    latencies.sort()
    return {
        "batch_window_ms": settings.batch_window_ms,
        "concurrency": concurrency,
        "requests": len(latencies),
        "images_per_s": round(len(latencies) / elapsed, 2),
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "mean_batch_size": round(stats.items / stats.batches, 2) if stats and stats.batches else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/encoder.json")
    parser.add_argument("--min-seconds", type=float, default=1.5, help="measuring time per throughput point")
    parser.add_argument("--skip-vit-b32", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict = {
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "throughput": {},
        "batching_window": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        profile = build_tiny_pack(Path(tmp) / "pack", echo=None)
        tiny = load_settings(
            EncoderSettings, section=SECTION, env_prefix=ENV_PREFIX, profile=profile, environ={}
        )
        models = {"tiny": tiny}
        if not args.skip_vit_b32:
            models["vit_b_32_random"] = _vit_b32_settings(Path(tmp))
        for name, settings in models.items():
            print(f"{name}: engine throughput", flush=True)
            engine = build_engine(settings)
            sizes = [1, 4, 16, 64] if name == "tiny" else [1, 4, 16]
            results["throughput"][name] = engine_throughput(engine, sizes, args.min_seconds)
            del engine
        for name, settings in models.items():
            rows = []
            windows = [0.0, 2.0, 5.0, 20.0]
            concurrency, each = (16, 8) if name == "tiny" else (8, 3)
            for window in windows:
                settings.batch_window_ms = window
                row = asyncio.run(_load_under_concurrency(settings, concurrency, each))
                print(f"{name}: window {window:5.1f} ms -> {row}", flush=True)
                rows.append(row)
            results["batching_window"][name] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
