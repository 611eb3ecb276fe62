"""Hostile input against the running suite: every service answers each fuzzed request with a status that
names the caller's mistake (never INTERNAL or UNKNOWN), stays up and SERVING, and gives its memory back.

Seeded (CIR_FUZZ_SEED overrides), >= 1,000 requests per service over all of its RPCs: structured cases
with extreme field values and malformed bytes (see tests/support/fuzz.py). A failing case is reported
with its index, so `CaseMaker(seed)` replays it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.fuzz import call, cases, service_methods

from cir.captioner.v1 import captioner_pb2
from cir.encoder.v1 import encoder_pb2
from cir.reasoner.v1 import reasoner_pb2
from cir.retriever.v1 import retriever_pb2
from cir_common.vocabulary import SERVICES, Service
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("CIR_FUZZ_SEED", "20261201"))
REQUESTS_PER_SERVICE = 1000
# Calls in flight per service: enough to batch items from different callers together (so one bad item
# meets innocent ones in a batch) without queueing past the deadlines on two cores.
CONCURRENCY = 8
# Valid-looking cases may reach the models (an LLM generation, a captioning); the deadline bounds them.
DEADLINE_S = 20.0
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Memory after the run may exceed the start by caches and allocator slack, not by what the requests held.
MEMORY_SLACK_BYTES = 400 * 1024 * 1024
MEMORY_SLACK_SHARE = 0.5

DESCRIPTORS = {
    "encoder": encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"],
    "captioner": captioner_pb2.DESCRIPTOR.services_by_name["CaptionerService"],
    "reasoner": reasoner_pb2.DESCRIPTOR.services_by_name["ReasonerService"],
    "retriever": retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"],
}


def _tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (vLLM runs its engine in a child)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return total


@pytest.fixture(scope="module")
def suite(tiny_pack, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz-suite")
    image_root = workdir / "images"
    image_root.mkdir()
    suite = LocalSuite(
        profile=tiny_pack,
        workdir=workdir,
        # file:// URIs are allowed under one folder, so the fuzzer's path-like URIs meet the real check.
        extra_env={f"{ids.env_prefix}IMAGE_URI_ROOTS": str(image_root) for ids in SERVICES.values()},
    )
    suite.start(timeout_s=400)
    yield suite
    suite.stop()


def _serving(suite: LocalSuite, name: str) -> bool:
    grpc_name = SERVICES[Service(name)].grpc_name
    with grpc.insecure_channel(suite.processes[name].address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=grpc_name), timeout=30
        )
    return answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("name", ["encoder", "captioner", "reasoner", "retriever"])
def test_hostile_requests_get_a_status_that_names_the_mistake(suite, name):
    service = suite.processes[name]
    methods = service_methods(DESCRIPTORS[name])
    rss_before = _tree_rss_bytes(service.process.pid)
    codes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    with (
        grpc.insecure_channel(service.address, options=[("grpc.max_send_message_length", -1)]) as channel,
        concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool,
    ):
        futures = {
            pool.submit(call, channel, method, messages, DEADLINE_S): (index, method.path)
            for index, method, messages in cases(SEED, methods, REQUESTS_PER_SERVICE)
        }
        for future in concurrent.futures.as_completed(futures):
            index, path = futures[future]
            code = future.result()
            codes[code.name] += 1
            if code in FORBIDDEN:
                failures.append(f"case {index} ({path}) -> {code.name}")
    assert sum(codes.values()) == REQUESTS_PER_SERVICE
    assert not failures, f"seed {SEED}: {len(failures)} forbidden, e.g. {failures[:10]}; all: {codes}"
    # The fuzzer must reach past the parser: some cases are refused as bad arguments, and some succeed.
    assert codes["INVALID_ARGUMENT"] > 0 and codes["OK"] > 0, codes
    assert service.process.poll() is None, f"{name} exited; its log:\n{service.log_tail()}"
    assert _serving(suite, name)
    rss_after = _tree_rss_bytes(service.process.pid)
    allowed = rss_before + max(MEMORY_SLACK_BYTES, int(MEMORY_SLACK_SHARE * rss_before))
    assert rss_after <= allowed, (
        f"{name} grew from {rss_before / 2**20:.0f} MiB to {rss_after / 2**20:.0f} MiB over the run"
    )


def test_every_service_is_still_serving_after_the_fuzzing(suite):
    for name in SERVICES:
        assert suite.processes[name].process.poll() is None, name
        assert _serving(suite, name), name
