"""API keys over real gRPC: `python -m cir_retriever` with a keys file, called by the Python client and `cir`.

One retriever process on loopback, its model services down (nothing listens at their addresses): the
authorizer runs before any RPC does, so each call's status says whether the key let it through. Every role
against every RPC, no key, a wrong key, a rate limit, health open without a key, reflection off by setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import Credentials, connect
from cir_common.request_context import RETRY_AFTER_HEADER
from cir_common.vocabulary import RETRIEVER
from cir_retriever.auth import RPC_ROLES, Role, allowed_rpcs, keys_entry
from cir_tools.cli import main as cir
from cir_tools.local_suite import LocalSuite

KEYS = {Role.SEARCH: "cir_test-search", Role.WRITE: "cir_test-write", Role.ADMIN: "cir_test-admin"}
THROTTLED_KEY = "cir_test-throttled"
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
METHODS = {m.name: m for m in retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"].methods}


@dataclass
class Retriever:
    address: str
    log: Path


@pytest.fixture(scope="module")
def retriever(tmp_path_factory) -> Iterator[Retriever]:
    workdir = tmp_path_factory.mktemp("api-keys")
    keys_file = workdir / "keys.toml"
    keys_file.write_text(
        "".join(keys_entry(f"{role}-caller", key, role) for role, key in KEYS.items())
        # 2 calls at once, then one every 1000 s: the third call in this test is over the limit.
        + keys_entry("throttled", THROTTLED_KEY, Role.SEARCH, requests_per_second=0.001, burst=2),
        encoding="utf-8",
    )
    profile = workdir / "profile.toml"
    profile.write_text("", encoding="utf-8")  # the defaults: no model is loaded by the retriever
    # The retriever alone: nothing listens at its model services' addresses, and no Redis.
    suite = LocalSuite(
        profile=profile,
        workdir=workdir,
        use_redis=False,
        extra_env={"CIR_RETRIEVER_API_KEYS_FILE": str(keys_file), "CIR_RETRIEVER_REFLECTION": "false"},
        progress=None,
    )
    suite.start(timeout_s=300, names=("retriever",))
    try:
        yield Retriever(suite.retriever_address, suite.processes["retriever"].log_path)
    finally:
        suite.stop()


def _call(address: str, rpc: str, credentials: Credentials) -> grpc.StatusCode:
    """Calls `rpc` with an empty request through the Python client (its key interceptor on every call
    shape); the status code it ends with."""
    stub = connect(address, credentials)
    method = METHODS[rpc]
    request = getattr(retriever_pb2, method.input_type.name)()
    call = getattr(stub, rpc)
    try:
        answer = call(iter([request]) if method.client_streaming else request, timeout=60)
        if method.server_streaming:
            list(answer)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("rpc", sorted(RPC_ROLES))
def test_each_role_against_each_rpc(retriever, rpc):
    outcomes = {role: _call(retriever.address, rpc, Credentials(api_key=KEYS[role])) for role in Role}
    for role, code in outcomes.items():
        if rpc in allowed_rpcs(role):
            # Past the key: the RPC ran (an empty request may still be refused, by the RPC itself).
            assert code not in AUTH_CODES, (role, code)
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (role, code)
    assert _call(retriever.address, rpc, Credentials()) == grpc.StatusCode.UNAUTHENTICATED
    wrong = Credentials(api_key=KEYS[Role.ADMIN] + "-wrong")
    assert _call(retriever.address, rpc, wrong) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("rpc", "role"), [("ListCollections", Role.SEARCH), ("GetServiceStats", Role.ADMIN)])
def test_the_right_role_gets_an_answer(retriever, rpc, role):
    assert _call(retriever.address, rpc, Credentials(api_key=KEYS[role])) == grpc.StatusCode.OK


def test_a_key_over_its_rate_limit_gets_resource_exhausted_with_a_retry_hint(retriever):
    stub = connect(retriever.address, Credentials(api_key=THROTTLED_KEY))
    request = retriever_pb2.ListStrategiesRequest()
    for _ in range(2):  # the burst
        stub.ListStrategies(request, timeout=30)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ListStrategies(request, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "'throttled' is over its rate limit" in refused.value.details()
    trailers = dict(refused.value.trailing_metadata())
    assert int(trailers[RETRY_AFTER_HEADER]) > 0


def test_health_answers_without_a_key_and_reflection_is_off(retriever):
    with grpc.insecure_channel(retriever.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", RETRIEVER.grpc_name):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        listing = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as refused:
            list(reflection.ServerReflectionInfo(iter([listing]), timeout=30))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_key_never_reaches_the_log(retriever):
    _call(retriever.address, "Search", Credentials(api_key=KEYS[Role.SEARCH] + "-wrong"))
    text = retriever.log.read_text()
    assert "API keys: 4 keys from" in text
    assert not any(key in text for key in [*KEYS.values(), THROTTLED_KEY])


def test_cir_sends_cir_api_key(retriever, monkeypatch, capsys):
    monkeypatch.delenv("CIR_API_KEY", raising=False)
    monkeypatch.delenv("CIR_TLS_CA_FILE", raising=False)
    assert cir(["collections", "list", "--address", retriever.address]) == 1
    assert "cir: UNAUTHENTICATED: no API key" in capsys.readouterr().err
    monkeypatch.setenv("CIR_API_KEY", KEYS[Role.SEARCH])
    assert cir(["collections", "list", "--address", retriever.address]) == 0
    assert cir(["collections", "create", "from-cli", "--address", retriever.address]) == 1
    assert "cir: PERMISSION_DENIED: the API key 'search-caller' has role 'search'" in capsys.readouterr().err
    monkeypatch.setenv("CIR_API_KEY", KEYS[Role.WRITE])
    assert cir(["collections", "create", "from-cli", "--address", retriever.address]) == 0
    monkeypatch.setenv("CIR_API_KEY", KEYS[Role.SEARCH])
    capsys.readouterr()
    assert cir(["collections", "list", "--address", retriever.address]) == 0
    assert capsys.readouterr().out.split() == ["from-cli"]
