"""Local gallery store benchmark: exact search against bare numpy in the same run, the first search after a
write, search latency while ingesting, memory per image, load time, approximate (HNSW) recall.

  .venv/bin/python bench/store_bench.py --sizes 10000,100000,1000000 --out bench/results/store.json

Per size, a collection of random vectors (d = 768, a fixed seed) is written through the public API
(`Collection.upsert`, SQLite, in batches), then measured in a fresh child process, so that the memory per
image is what opening and loading the collection costs (RSS after `load()` minus RSS before opening).
"numpy" is the bare baseline on a plain contiguous copy of the same normalised vectors: `X @ q`,
`argpartition`, a sort of the top k (for a batch: one `Q @ X.T` and the same per row). Timings are medians
of interleaved repeats. `--slots` sets R, the caption slots stored per image (3, the product's WeiMoCIR R,
by default; 1 to fit a 1M collection on a small disk: ~15 GB of SQLite at R = 3, ~9 GB at R = 1); the JSON
says which was used. The JSON keys `exact_search`, `after_write`, `ingest_while_searching`,
`memory_bytes_per_image`, `ann` and `milvus` are read by external checks: keep them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from cir_retriever.fusion import ScoreFunction, normalize
from cir_retriever.gallery import matrices as exact
from cir_retriever.gallery.ann import AnnIndexes
from cir_retriever.gallery.local import Collection, GalleryStore
from cir_retriever.gallery.types import (
    AnnIndex,
    CollectionSettings,
    Condition,
    FieldType,
    Filter,
    FilterableField,
    GalleryKind,
    GallerySpec,
    ImageRecord,
    Range,
)
from cir_tools.termination import exit_on_sigterm

COLLECTION = "bench"
FIELDS = (FilterableField("bucket", FieldType.INT),)  # bucket = i % 10: a filter on one bucket keeps 10%
IMAGE = GallerySpec(GalleryKind.IMAGE)
CVSI = GallerySpec(GalleryKind.CVSI, 0.5, False, ScoreFunction.COSINE)
TEN_PERCENT = Filter((Condition("bucket", Range(gte=3, lte=3)),))
FILL_BATCH = 10_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return ms(started)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def records(rng: np.random.Generator, first: int, count: int, dim: int, slots: int, prefix: str = "img"):
    image = rng.standard_normal((count, dim), dtype=np.float32)
    mean = rng.standard_normal((count, dim), dtype=np.float32) * np.float32(0.2)
    caption_slots = rng.standard_normal((count, slots, dim), dtype=np.float32)
    return [
        ImageRecord(
            id=f"{prefix}-{first + i:08d}",
            uri=f"file:///gallery/{first + i}.png",
            metadata={"bucket": str((first + i) % 10)},
            content_sha256=f"{first + i:064x}",
            captions=[],
            image_raw=image[i],
            caption_mean=mean[i],
            caption_slots=caption_slots[i],
        )
        for i in range(count)
    ]


# --- fill (this process) ------------------------------------------------------------------------------


def fill(folder: Path, n: int, args: argparse.Namespace) -> dict:
    """Writes n images through the public API, in large batches (one SQLite transaction each)."""
    store = GalleryStore(folder)
    collection = store.create(COLLECTION, CollectionSettings(filterable_fields=FIELDS))
    collection.record_models({"name": "random", "revision": str(args.seed)}, {}, args.dim)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    for first in range(0, n, FILL_BATCH):
        collection.upsert(records(rng, first, min(FILL_BATCH, n - first), args.dim, args.slots))
        if first and first % 200_000 == 0:
            log(f"  filled {first} / {n}")
    seconds = time.perf_counter() - started
    store.close()
    return {"n": n, "fill_rows_per_s": round(n / seconds, 1), "fill_s": round(seconds, 1)}


# --- measure (a child process per size) ---------------------------------------------------------------


def numpy_top(matrix: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ q
    part = np.argpartition(scores, scores.size - k)[scores.size - k :]
    return part[np.argsort(-scores[part])]


def numpy_top_batch(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ matrix.T
    rows = scores.shape[1]
    part = np.argpartition(scores, rows - k, axis=1)[:, rows - k :]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1)
    return np.take_along_axis(part, order, axis=1)


def interleaved(contenders: dict[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """Median ms of each contender, run alternately (the order flips every round) after one warm-up each."""
    names = list(contenders)
    for name in names:
        contenders[name](0)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else reversed(names):
            times[name].append(timed(lambda name=name, round_=round_: contenders[name](round_ + 1)))
    return {name: median(values) for name, values in times.items()}


def exact_search(collection: Collection, queries: np.ndarray, args: argparse.Namespace) -> dict:
    k, n = args.k, collection.size()
    view = collection.matrices().view()
    plain = np.ascontiguousarray(view.t_v[:n])  # the bare baseline's own contiguous matrix
    ours = [h.id for h in collection.search(IMAGE, queries[0], k)]
    same = ours == [view.ids[r] for r in numpy_top(plain, queries[0], k)]
    batch = queries[: args.batch]

    def query(r: int) -> np.ndarray:
        return queries[r % len(queries)]

    one = interleaved(
        {
            "one_query_ms": lambda r: collection.search(IMAGE, query(r), k),
            "numpy_one_query_ms": lambda r: numpy_top(plain, query(r), k),
            "cvsi_one_query_ms": lambda r: collection.search(CVSI, query(r), k),
            "filtered_10pct_one_query_ms": lambda r: collection.search(IMAGE, query(r), k, TEN_PERCENT),
        },
        args.repeats,
    )
    batched = interleaved(
        {
            "batch100_ms": lambda r: collection.search_batch(IMAGE, batch, k),
            "numpy_batch100_ms": lambda r: numpy_top_batch(plain, batch, k),
        },
        args.repeats,
    )
    log(f"  exact: {one} {batched}")
    return {
        "n": n,
        **one,
        **batched,
        **faiss_flat(plain, queries, args),
        "one_query_vs_numpy": round(one["one_query_ms"] / one["numpy_one_query_ms"], 3),
        "batch100_vs_numpy": round(batched["batch100_ms"] / batched["numpy_batch100_ms"], 3),
        "same_top_k_as_numpy": same,
        "k": k,
        "batch": len(batch),
    }


def faiss_flat(plain: np.ndarray, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """FAISS IndexFlatIP on the same vectors (the engine the store does not use: slower here)."""
    index = faiss.IndexFlatIP(args.dim)
    index.add(plain)
    one = interleaved(
        {"faiss_flat_one_query_ms": lambda r: index.search(queries[r % len(queries)][None, :], args.k)},
        args.repeats,
    )
    batch = interleaved(
        {"faiss_flat_batch100_ms": lambda r: index.search(queries[: args.batch], args.k)},
        1 if len(plain) >= 500_000 else 3,
    )
    return {**one, **batch}


def after_write(collection: Collection, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """The first search after a 16-image upsert against steady searches, over several writes."""
    rng = np.random.default_rng(args.seed + 7)
    steady, first, writes = [], [], []
    loaded = collection.rows_loaded
    for trial in range(args.write_trials):
        q = queries[trial % len(queries)]
        steady.append(
            statistics.median(timed(lambda q=q: collection.search(IMAGE, q, args.k)) for _ in range(3))
        )
        batch = records(rng, trial * 16, 16, args.dim, args.slots, prefix=f"write{trial}")
        writes.append(timed(lambda batch=batch: collection.upsert(batch)))
        first.append(timed(lambda q=q: collection.search(IMAGE, q, args.k)))
    assert collection.rows_loaded == loaded, "a search after a write re-read SQLite"
    return {
        "n": collection.size() - 16 * args.write_trials,
        "first_search_after_write_ms": median(first),
        "steady_search_ms": median(steady),
        "first_search_after_write_max_ms": round(max(first), 2),
        "upsert_16_ms": median(writes),
        "writes": args.write_trials,
        "rows_read_from_sqlite_by_searches": collection.rows_loaded - loaded,
    }


def ingest_while_searching(collection: Collection, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """Search latency while another thread upserts 16-image batches back to back."""
    quiet = [
        timed(lambda i=i: collection.search(IMAGE, queries[i % len(queries)], args.k)) for i in range(20)
    ]
    stop = threading.Event()
    upserts = [0]

    def write() -> None:
        rng = np.random.default_rng(args.seed + 11)
        while not stop.is_set():
            collection.upsert(records(rng, upserts[0] * 16, 16, args.dim, args.slots, prefix="ingest"))
            upserts[0] += 1

    n = collection.size()
    writer = threading.Thread(target=write)
    writer.start()
    latencies: list[float] = []
    deadline = time.perf_counter() + args.ingest_seconds
    while time.perf_counter() < deadline:
        latencies.append(
            timed(lambda: collection.search(IMAGE, queries[len(latencies) % len(queries)], args.k))
        )
    stop.set()
    writer.join()
    return {
        "n": n,
        "search_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "search_p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "searches": len(latencies),
        "upserts": upserts[0],
        "images_ingested": 16 * upserts[0],
        "seconds": args.ingest_seconds,
        "quiet_search_p50_ms": round(float(np.percentile(quiet, 50)), 2),
    }


def ann_figures(collection: Collection, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """HNSW (the collection option `ann = "hnsw"`, default parameters) against exact search on the
    collection's own rows, with the recall / latency at other efSearch values.

    Uniformly random 768-d vectors are the worst case for a graph index (a query's top 50 are barely closer
    than the rest), so the same is also measured on clustered vectors with queries near gallery images,
    closer to how CLIP galleries and composed queries sit."""
    uniform = hnsw_recall(collection.matrices().view(), queries, args)
    clustered_view, clustered_queries = clustered(min(collection.size(), args.ann_max), args)
    return {
        "n": uniform["n"],
        "method": AnnIndex.HNSW.value,
        "data": "uniform random (this collection)",
        "recall_at_50": uniform["recall_at_50"],
        "query_ms": uniform["query_ms"],
        **{key: value for key, value in uniform.items() if key not in ("n", "recall_at_50", "query_ms")},
        "clustered": hnsw_recall(clustered_view, clustered_queries, args),
    }


def hnsw_recall(view: exact.View, queries: np.ndarray, args: argparse.Namespace) -> dict:
    indexes = AnnIndexes(AnnIndex.HNSW)
    build = timed(lambda: indexes.search(view, IMAGE, queries[:1], args.k))
    truth, _ = exact.search(view, IMAGE, queries, args.k)
    exact_ms = median([timed(lambda q=q: exact.search(view, IMAGE, q, args.k)) for q in queries[:20]])
    default_ef = indexes.ef_search
    sweep = []
    for ef_search in sorted({64, default_ef, 1024}):
        indexes.ef_search = ef_search
        found, times = [], []
        for q, expected in zip(queries, truth, strict=True):
            started = time.perf_counter()
            result = indexes.search(view, IMAGE, q[None, :], args.k)
            times.append(ms(started))
            assert result is not None
            found.append(len(set(result[0][0].tolist()) & set(expected.tolist())) / args.k)
        recall = round(float(np.mean(found)), 4)
        sweep.append({"ef_search": ef_search, "recall_at_50": recall, "query_ms": median(times)})
    default = next(s for s in sweep if s["ef_search"] == default_ef)
    return {
        "n": view.live,
        "recall_at_50": default["recall_at_50"],
        "query_ms": default["query_ms"],
        "exact_query_ms": exact_ms,
        "ef_search": default_ef,
        "hnsw_m": indexes.hnsw_m,
        "build_s": round(build / 1000.0, 1),
        "queries": len(queries),
        "ef_search_sweep": sweep,
    }


def clustered(n: int, args: argparse.Namespace) -> tuple[exact.View, np.ndarray]:
    """n vectors around n / 100 random centres (in-memory matrices, no SQLite), and queries that are
    gallery vectors moved by noise of the same size as the spread within a cluster."""
    rng = np.random.default_rng(args.seed + 3)
    centres = rng.standard_normal((max(1, n // 100), args.dim), dtype=np.float32)
    matrices = exact.SearchMatrices((), args.dim, n)
    for first in range(0, n, FILL_BATCH):
        count = min(FILL_BATCH, n - first)
        vectors = centres[rng.integers(len(centres), size=count)] + rng.standard_normal(
            (count, args.dim), dtype=np.float32
        ) * np.float32(1.0)
        ids = [f"c{first + i}" for i in range(count)]
        matrices.upsert(
            exact.RowBatch(ids, ids, ["{}"] * count, vectors, np.zeros_like(vectors), [{}] * count)
        )
    view = matrices.view()
    picks = view.t_v[rng.integers(n, size=100)]
    noise = rng.standard_normal(picks.shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(args.dim))
    return view, normalize(picks + noise).astype(np.float32)


def measure(folder: Path, args: argparse.Namespace) -> dict:
    before = rss_bytes()
    collection = GalleryStore(folder).open(COLLECTION)
    started = time.perf_counter()
    collection.load()
    load_s = time.perf_counter() - started
    loaded = rss_bytes()
    n = collection.size()
    view = collection.matrices().view()
    log(f"  n = {n}: loaded in {load_s:.1f} s, RSS +{(loaded - before) / n:.0f} bytes per image")
    queries = normalize(
        np.random.default_rng(args.seed + 1).standard_normal((max(args.batch, 100), args.dim))
    )
    queries = queries.astype(np.float32)
    result: dict = {
        "memory": {
            "n": n,
            "load_s": round(load_s, 2),
            "load_rows_per_s": round(n / load_s, 1),
            "rss_bytes_per_image": round((loaded - before) / n, 1),
            "matrix_bytes_per_image": round(
                sum(
                    a[:n].nbytes
                    for a in (view.t_v, view.t_c, view.image_sq, view.caption_sq, view.caption_dot)
                )
                / n,
                1,
            ),
            "rss_after_load_gib": round(loaded / 2**30, 2),
        }
    }
    result["exact_search"] = exact_search(collection, queries, args)
    result["after_write"] = after_write(collection, queries, args)
    log(f"  after write: {result['after_write']}")
    if n <= args.ann_max:
        result["ann"] = ann_figures(collection, queries, args)
        log(f"  ann: {result['ann']}")
    if n == args.ingest_n:
        result["ingest_while_searching"] = ingest_while_searching(collection, queries, args)
        log(f"  ingest while searching: {result['ingest_while_searching']}")
    return result


# --- driver -------------------------------------------------------------------------------------------


# --- milvus backend (a local Milvus engine: milvus-lite's server) ------------------------------------------


def measure_milvus(args: argparse.Namespace) -> dict:
    """Insert rows/s and search ms of the milvus backend through `MilvusGalleryStore`, on milvus-lite's
    engine on loopback (the real Milvus C++ engine; a Milvus cluster has more cores and its own figures)."""
    from cir_retriever.gallery.milvus import MilvusGalleryStore
    from cir_tools.local_milvus import start_milvus

    n, batch = args.milvus_size, 256
    rng = np.random.default_rng(args.seed)
    server = start_milvus()
    store = MilvusGalleryStore(server.uri, prefix="bench")
    try:
        collection = store.create("bench", CollectionSettings())
        collection.record_models(
            {"name": "bench", "revision": "0"}, {"name": "bench", "revision": "0"}, args.dim
        )
        started = time.perf_counter()
        for first in range(0, n, batch):
            collection.upsert(records(rng, first, min(batch, n - first), args.dim, args.slots))
        insert_s = time.perf_counter() - started
        started = time.perf_counter()
        collection.upsert(records(rng, n, 16, args.dim, args.slots, prefix="new"))
        upsert_16_ms = ms(started)
        queries = normalize(rng.standard_normal((args.repeats, args.dim), dtype=np.float32))
        specs = {
            "image": (GallerySpec(GalleryKind.IMAGE), queries),
            "cvsi_dot": (GallerySpec(GalleryKind.CVSI, gamma=0.2), queries),
            "cvsi_cosine_preset": (
                GallerySpec(GalleryKind.CVSI, gamma=0.2, score=ScoreFunction.COSINE),
                queries,
            ),
        }
        search_ms = {}
        for name, (spec, probes) in specs.items():
            collection.search(spec, probes[0], args.k)  # first search loads the collection in the engine
            search_ms[name] = round(
                median([timed(lambda q=q, spec=spec: collection.search(spec, q, args.k)) for q in probes]), 2
            )
        return {
            "engine": "milvus-lite 2.5.1 server on loopback (FLAT, inner product, Strong consistency)",
            "n": n + 16,
            "insert_rows_per_s": round(n / insert_s, 1),
            "insert_batch": batch,
            "upsert_16_ms": round(upsert_16_ms, 1),
            "search_ms": search_ms,
            "k": args.k,
        }
    finally:
        store.close()
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes, comma-separated")
    parser.add_argument("--out", default="bench/results/store.json")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100, help="queries in the batched search")
    parser.add_argument("--slots", type=int, default=3, help="caption slots R stored per image")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved repeats per one-query timing")
    parser.add_argument(
        "--write-trials", type=int, default=7, help="16-image writes in the after-write figure"
    )
    parser.add_argument(
        "--ingest-n", type=int, default=100_000, help="size at which to search while ingesting"
    )
    parser.add_argument("--ingest-seconds", type=float, default=20.0)
    parser.add_argument("--ann-max", type=int, default=100_000, help="largest size for the HNSW figures")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--milvus-size", type=int, default=20_000, help="images for the milvus figures (0: skip)"
    )
    parser.add_argument("--dir", default="", help="work folder for the SQLite files (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite files")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # internal: the child process
    return parser.parse_args(argv)


def main() -> None:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    args = parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="store-bench-"))
    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "numpy": np.__version__,
            "faiss": faiss.__version__,
        },
        "settings": {
            "dim": args.dim,
            "k": args.k,
            "caption_slots": args.slots,
            "dtype": "float32",
            "vectors": f"standard normal, normalised (images by the store, queries here), seed {args.seed}",
            "exact_engine": "numpy BLAS (gemv for one query, one gemm per stored matrix for a batch)",
        },
        "fill": [],
        "load": [],
        "exact_search": [],
        "after_write": [],
        "ingest_while_searching": None,
        "memory_bytes_per_image": None,
        "ann": [],
        "milvus": None,
    }
    try:
        for n in sizes:
            folder = work / f"n{n}"
            shutil.rmtree(folder, ignore_errors=True)
            log(f"n = {n}: filling {folder}")
            results["fill"].append(fill(folder, n, args))
            log(f"  {results['fill'][-1]}")
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--measure", str(folder)],
                stdout=subprocess.PIPE,
                text=True,
                check=True,
            )
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            results["load"].append(measured["memory"])
            results["memory_bytes_per_image"] = measured["memory"][
                "rss_bytes_per_image"
            ]  # the largest n wins
            results["exact_search"].append(measured["exact_search"])
            results["after_write"].append(measured["after_write"])
            if "ingest_while_searching" in measured:
                results["ingest_while_searching"] = measured["ingest_while_searching"]
            if "ann" in measured:
                results["ann"].append(measured["ann"])
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps(results, indent=2) + "\n"
            )  # after every size: a long run keeps its part
        if args.milvus_size:
            log(f"milvus: {args.milvus_size} images")
            results["milvus"] = measure_milvus(args)
            log(f"  {results['milvus']}")
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
