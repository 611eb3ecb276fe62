"""deploy/docker/healthcheck.py, the images' HEALTHCHECK: SERVING is 0, anything else 1."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cir_common.vocabulary import ENCODER, RETRIEVER

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def health_server() -> Iterator[tuple[health.HealthServicer, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(None)


def test_serving_is_healthy_and_not_serving_is_not(
    healthcheck: ModuleType,
    health_server: tuple[health.HealthServicer, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    servicer, port = health_server
    address = f"127.0.0.1:{port}"
    servicer.set(RETRIEVER.grpc_name, health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["retriever", "--address", address]) == 0
    assert capsys.readouterr().out.strip() == f"retriever at {address}: SERVING"
    servicer.set(RETRIEVER.grpc_name, health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["retriever", "--address", address]) == 1
    assert capsys.readouterr().out.strip() == f"retriever at {address}: NOT_SERVING"


def test_the_default_address_is_the_service_port_setting(
    healthcheck: ModuleType,
    health_server: tuple[health.HealthServicer, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    servicer, port = health_server
    servicer.set(ENCODER.grpc_name, health_pb2.HealthCheckResponse.SERVING)
    monkeypatch.setenv(f"{ENCODER.env_prefix}PORT", str(port))
    assert healthcheck.main(["encoder", "--timeout", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"encoder at 127.0.0.1:{port}: SERVING"


def test_an_unreachable_service_is_unhealthy(
    healthcheck: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # nothing listens on port 9
    assert healthcheck.main(["captioner", "--address", "127.0.0.1:9", "--timeout", "2"]) == 1
    assert capsys.readouterr().err.startswith("captioner at 127.0.0.1:9: UNAVAILABLE: ")


def test_it_knows_the_four_services(healthcheck: ModuleType) -> None:
    with pytest.raises(SystemExit) as exit:
        healthcheck.main(["gateway"])
    assert exit.value.code == 2
