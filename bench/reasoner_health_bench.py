"""How long the reasoner's health checks wait while it prepares large requests.

  .venv/bin/python bench/reasoner_health_bench.py --label after --out bench/results/reasoner_health.json

Starts a real reasoner server (`python -m cir_reasoner` in its own process, the vLLM CPU engine on the
tiny pack, eager) and waits until it is SERVING. Then, per scenario, a poller thread sends
grpc.health.v1 `Check` every 20 ms on its own channel and records each call's latency (sent to answered)
while the load sends its requests all at once from other threads:

- `idle`: no load, 3 s of checks: the noise floor of this machine.
- `at_limit_joined`: `--requests` EditCaptions calls in joined mode, each the largest request the limits
  allow (64 captions and an instruction of max_text_chars - 1 characters of caption words). Joined mode
  tokenizes the most: the prompt budget's search renders and tokenizes the joined prompt several times.
  Short answers (4 tokens): the figure is about preparing prompts, not generating.
- `oversized`: `--requests` EditCaptions calls with one caption of 1 MiB (what issue 14 saw block the
  health checks for seconds). Refused before tokenizing where the limit exists.

Keys of the output: `runs.<label>` (one per `--label`; a run adds its own, keeping the others) holds
`command`, `reasoner_src`, `machine` (cores, load average before the run), `settings`, and per scenario
`requests` (status code and seconds of each call) and `health` (`checks`, `p50_ms`, `p99_ms`, `max_ms`,
`over_100ms`: checks that took longer than 100 ms). The headline is `health.max_ms` under load.

`--reasoner-src DIR` puts DIR first on the server's PYTHONPATH: how the `before` run measured the
reasoner of commit 852af13, before prompts left the event loop (the rest of the suite unchanged):

  mkdir -p /tmp/before && git archive 852af13 services/reasoner/src | tar -x -C /tmp/before
  .venv/bin/python bench/reasoner_health_bench.py --label before \\
      --reasoner-src /tmp/before/services/reasoner/src --out bench/results/reasoner_health.json

Timings on a shared 2-core machine move a lot from run to run; the difference that matters here is
between hundreds of milliseconds or seconds (the loop busy tokenizing) and tens (it is not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cir.common.v1 import common_pb2
from cir.reasoner.v1 import reasoner_pb2, reasoner_pb2_grpc
from cir_common.vocabulary import REASONER
from cir_tools.local_suite import LocalSuite
from cir_tools.packs.tiny import build_tiny_pack
from cir_tools.termination import exit_on_sigterm

SERVICE = REASONER.grpc_name
HEALTH_PERIOD_S = 0.02
MAX_TEXT_CHARS = 4096  # the reasoner's default limit
MAX_CAPTIONS = 64  # the reasoner's default max_captions_per_request
SENTENCES = (
    "a man riding a wave on top of a surfboard",
    "a surfer in a black wetsuit riding a big wave near the beach",
    "a young woman with a red board in the blue ocean on a sunny day",
    "a small dog sitting next to a large cat at sunset",
)
WORDS = [word for sentence in SENTENCES for word in sentence.split()]


@dataclass
class Health:
    latencies_s: list[float]

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return {"checks": 0}
        return {
            "checks": len(ordered),
            "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "max_ms": round(1000 * ordered[-1], 1),
            "over_100ms": sum(1 for s in ordered if s > 0.1),
        }


def text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    length = 0
    while length < chars:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:chars]


def at_limit_request(rng: random.Random) -> reasoner_pb2.EditCaptionsRequest:
    return reasoner_pb2.EditCaptionsRequest(
        captions=[text(rng, MAX_TEXT_CHARS - 1) for _ in range(MAX_CAPTIONS)],
        instruction=text(rng, MAX_TEXT_CHARS - 1),
        mode=common_pb2.EDIT_MODE_JOINED,
        sampling=reasoner_pb2.SamplingParameters(max_tokens=4),
        bypass_cache=True,
    )


def oversized_request(rng: random.Random) -> reasoner_pb2.EditCaptionsRequest:
    return reasoner_pb2.EditCaptionsRequest(
        captions=[text(rng, 1024 * 1024)],
        instruction="is at sunset and has a dog surfing next to him",
        sampling=reasoner_pb2.SamplingParameters(max_tokens=4),
        bypass_cache=True,
    )


def poll_health(address: str, stop: threading.Event, into: Health) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=SERVICE)
        stub.Check(request, timeout=60)  # connected before the clock starts
        while not stop.is_set():
            started = time.perf_counter()
            stub.Check(request, timeout=600)
            took = time.perf_counter() - started
            into.latencies_s.append(took)
            stop.wait(max(0.0, HEALTH_PERIOD_S - took))


def run_scenario(
    address: str, requests: list[reasoner_pb2.EditCaptionsRequest], idle_s: float
) -> dict[str, Any]:
    health = Health([])
    stop = threading.Event()
    poller = threading.Thread(target=poll_health, args=(address, stop, health), daemon=True)
    poller.start()
    time.sleep(0.5)  # the poller runs before the load arrives
    results: list[dict[str, Any]] = []
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = reasoner_pb2_grpc.ReasonerServiceStub(channel)

        def call(request: reasoner_pb2.EditCaptionsRequest) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                stub.EditCaptions(request, timeout=600)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            return {"code": code, "seconds": round(time.perf_counter() - started, 3)}

        if requests:
            with ThreadPoolExecutor(len(requests)) as pool:
                results = list(pool.map(call, requests))
        else:
            time.sleep(idle_s)
    time.sleep(0.5)  # and after it is answered
    stop.set()
    poller.join(timeout=600)
    return {"requests": results, "health": health.summary()}


def main() -> int:
    exit_on_sigterm()  # a killed bench still stops the processes it started
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/reasoner_health.json")
    parser.add_argument("--label", default="after", help="the run's key under `runs` (e.g. before, after)")
    parser.add_argument(
        "--reasoner-src", default="", help="a cir_reasoner source folder put first on PYTHONPATH"
    )
    parser.add_argument("--requests", type=int, default=4, help="concurrent requests per scenario")
    parser.add_argument("--pack", default="", help="an existing tiny pack folder (default: build one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="reasoner-health-") as tmp:
        workdir = Path(tmp)
        profile = (
            Path(args.pack) / "profile.toml" if args.pack else build_tiny_pack(workdir / "pack", echo=None)
        )
        env = {f"{REASONER.env_prefix}ENFORCE_EAGER": "true", "VLLM_CPU_KVCACHE_SPACE": "1"}
        if args.reasoner_src:
            env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [args.reasoner_src, os.environ.get("PYTHONPATH")])
            )
        suite = LocalSuite(profile=profile, workdir=workdir / "suite", use_redis=False, extra_env=env)
        load_before = os.getloadavg()
        suite.start(timeout_s=900, names=(REASONER.service,))
        try:
            address = suite.processes[REASONER.service].address
            rng = random.Random(14)
            # A first call warms the engine up (its first step compiles nothing when eager, but allocates).
            run_scenario(address, [at_limit_request(rng)], 0)
            scenarios = {
                "idle": run_scenario(address, [], idle_s=3.0),
                "at_limit_joined": run_scenario(
                    address, [at_limit_request(rng) for _ in range(args.requests)], 0
                ),
                "oversized": run_scenario(address, [oversized_request(rng) for _ in range(args.requests)], 0),
            }
        finally:
            suite.stop()

    run = {
        "command": "python " + " ".join(sys.argv),
        "reasoner_src": args.reasoner_src or "working tree",
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "python": platform.python_version(),
        },
        "settings": {
            "health_period_ms": int(HEALTH_PERIOD_S * 1000),
            "concurrent_requests": args.requests,
            "captions_per_request": MAX_CAPTIONS,
            "chars_per_text_at_limit": MAX_TEXT_CHARS - 1,
            "oversized_chars": 1024 * 1024,
        },
        "scenarios": scenarios,
    }
    out = Path(args.out)
    document: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    document.setdefault("runs", {})[args.label] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(run["scenarios"], indent=2))
    print(f"wrote {out} (runs.{args.label})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
