"""TLS and mTLS: the service port, the channels between services, the images' health check, the cache.

Every certificate is made here (trustme) and written the way a rotation writes it: a new file renamed over
the old one (Kubernetes swaps a Secret volume's files just as atomically).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.cache import RedisCache, cache_from_settings
from cir_common.channels import open_channel
from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError
from cir_common.server import ServiceHost
from cir_common.tls import CA_FILE_ENV, TlsFiles
from cir_common.vocabulary import ENCODER
from cir_retriever.clients import Budget, DownstreamError, ModelServices
from cir_retriever.settings import RetrieverSettings
from cir_tools.local_redis import INSTALL_HINT, RedisProcess, RedisTls, redis_server_binary
from cir_tools.local_redis import start_redis as start_redis_process

HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "docker" / "healthcheck.py"
LOOPBACK = "127.0.0.1"
OTHER_NAME = "rotated.cir.test"  # a name only the rotated server certificate carries


def _write(path: Path, data: bytes) -> None:
    """Replace `path` at once, as a rotation does (a new file renamed over the old one)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


class Side:
    """One side's PEM files: its certificate and key, and the CA it trusts."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key, self.ca = (folder / f"{name}.{ext}" for ext in ("crt", "key", "ca.pem"))

    def write(self, issued: trustme.LeafCert, trusted: trustme.CA) -> Side:
        _write(self.cert, issued.cert_chain_pems[0].bytes())
        _write(self.key, issued.private_key_pem.bytes())
        _write(self.ca, trusted.cert_pem.bytes())
        return self

    def client_files(self, certificate: bool = True) -> TlsFiles:
        return TlsFiles(
            str(self.cert) if certificate else "", str(self.key) if certificate else "", str(self.ca)
        )


def _credentials(trusted: trustme.CA, issued: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    if issued is None:
        return grpc.ssl_channel_credentials(trusted.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        trusted.cert_pem.bytes(), issued.private_key_pem.bytes(), issued.cert_chain_pems[0].bytes()
    )


class _Encoder(encoder_pb2_grpc.EncoderServiceServicer):
    """Answers GetModelInfo once `release` is set, so a test can hold a call open."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.entered = asyncio.Event()

    async def GetModelInfo(self, request, context):
        self.entered.set()
        await self.release.wait()
        return encoder_pb2.GetModelInfoResponse(embedding_dim=7)


class Server:
    def __init__(self, host: ServiceHost, encoder: _Encoder) -> None:
        self.host, self.encoder = host, encoder

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.host.port}"


async def _serve(side: Side, mtls: bool) -> Server:
    settings = ServiceSettings(
        port=0,
        shutdown_grace_s=5,
        tls_cert_file=str(side.cert),
        tls_key_file=str(side.key),
        tls_client_ca_file=str(side.ca) if mtls else "",
    )
    host = ServiceHost([ENCODER.grpc_name], settings, display_name="tls probe")
    encoder = _Encoder()
    encoder_pb2_grpc.add_EncoderServiceServicer_to_server(encoder, host.server)
    await host.start()
    await host.set_ready()
    return Server(host, encoder)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_side(tmp_path: Path, ca: trustme.CA) -> Side:
    return Side(tmp_path / "server", "server").write(ca.issue_cert(LOOPBACK, "localhost"), ca)


@pytest.fixture
async def tls_server(server_side: Side) -> AsyncIterator[Server]:
    server = await _serve(server_side, mtls=False)
    yield server
    await server.host.stop()


@pytest.fixture
async def mtls_server(server_side: Side) -> AsyncIterator[Server]:
    server = await _serve(server_side, mtls=True)
    yield server
    await server.host.stop()


async def _check(
    address: str, credentials: grpc.ChannelCredentials | None, server_name: str | None = None
) -> grpc.StatusCode:
    """A health check on a new channel (a new connection, a new handshake): OK or the failure's code."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
    if credentials is None:
        channel = grpc.aio.insecure_channel(address)
    else:
        channel = grpc.aio.secure_channel(address, credentials, options=options)
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


# --- the port ----------------------------------------------------------------------------------------------


async def test_a_tls_port_serves_tls_and_refuses_plaintext(tls_server: Server, ca: trustme.CA) -> None:
    assert await _check(tls_server.address, _credentials(ca)) == grpc.StatusCode.OK
    assert await _check(tls_server.address, None) == grpc.StatusCode.UNAVAILABLE
    # A client that does not trust the server's CA does not connect either.
    assert await _check(tls_server.address, _credentials(trustme.CA())) == grpc.StatusCode.UNAVAILABLE


async def test_mtls_accepts_only_certificates_the_client_ca_signed(
    mtls_server: Server, ca: trustme.CA
) -> None:
    stranger = trustme.CA()
    assert (
        await _check(mtls_server.address, _credentials(ca, ca.issue_cert("retriever"))) == grpc.StatusCode.OK
    )
    assert await _check(mtls_server.address, _credentials(ca)) == grpc.StatusCode.UNAVAILABLE
    assert (
        await _check(mtls_server.address, _credentials(ca, stranger.issue_cert("retriever")))
        == grpc.StatusCode.UNAVAILABLE
    )
    assert await _check(mtls_server.address, None) == grpc.StatusCode.UNAVAILABLE


async def test_unusable_files_stop_the_start_naming_the_setting(server_side: Side, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere.key")
    settings = ServiceSettings(port=0, tls_cert_file=str(server_side.cert), tls_key_file=missing)
    host = ServiceHost([ENCODER.grpc_name], settings, display_name="tls probe")
    with pytest.raises(ConfigError, match=r"tls_key_file=.*nowhere.key.* cannot be read"):
        await host.start()
    other = trustme.CA().issue_cert(LOOPBACK)
    _write(tmp_path / "other.key", other.private_key_pem.bytes())
    settings.tls_key_file = str(tmp_path / "other.key")
    host = ServiceHost([ENCODER.grpc_name], settings, display_name="tls probe")
    with pytest.raises(ConfigError, match="not a PEM certificate chain and its unencrypted private key"):
        await host.start()


# --- rotation on the server --------------------------------------------------------------------------------


async def test_a_new_certificate_from_the_same_ca_serves_new_connections(
    tls_server: Server, server_side: Side, ca: trustme.CA
) -> None:
    address = tls_server.address
    assert await _check(address, _credentials(ca), server_name=OTHER_NAME) == grpc.StatusCode.UNAVAILABLE
    server_side.write(ca.issue_cert(LOOPBACK, OTHER_NAME), ca)
    assert await _check(address, _credentials(ca), server_name=OTHER_NAME) == grpc.StatusCode.OK
    assert await _check(address, _credentials(ca)) == grpc.StatusCode.OK


async def test_a_new_ca_for_both_sides_takes_effect_without_a_restart(
    mtls_server: Server, server_side: Side, ca: trustme.CA
) -> None:
    address = mtls_server.address
    before = _credentials(ca, ca.issue_cert("retriever"))
    assert await _check(address, before) == grpc.StatusCode.OK
    new_ca = trustme.CA()
    server_side.write(new_ca.issue_cert(LOOPBACK), new_ca)
    assert await _check(address, _credentials(new_ca, new_ca.issue_cert("retriever"))) == grpc.StatusCode.OK
    # Old trust or an old client certificate no longer gets in.
    assert await _check(address, before) == grpc.StatusCode.UNAVAILABLE
    old_certificate_new_trust = _credentials(new_ca, ca.issue_cert("retriever"))
    assert await _check(address, old_certificate_new_trust) == grpc.StatusCode.UNAVAILABLE


async def test_a_half_done_rotation_keeps_the_previous_pair_until_the_files_agree(
    tls_server: Server, server_side: Side, ca: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    address = tls_server.address
    rotated = ca.issue_cert(LOOPBACK, OTHER_NAME)
    with caplog.at_level(logging.WARNING, logger="cir_common.tls"):
        _write(server_side.cert, rotated.cert_chain_pems[0].bytes())  # the key is still the old one
        assert await _check(address, _credentials(ca)) == grpc.StatusCode.OK
        assert await _check(address, _credentials(ca), server_name=OTHER_NAME) == grpc.StatusCode.UNAVAILABLE
    assert "keeping the previous ones" in caplog.text and "key values mismatch" in caplog.text
    _write(server_side.key, rotated.private_key_pem.bytes())
    assert await _check(address, _credentials(ca), server_name=OTHER_NAME) == grpc.StatusCode.OK


# --- channels between services -----------------------------------------------------------------------------


async def test_the_retrievers_channels_reach_mtls_model_services_and_follow_rotation(
    mtls_server: Server, server_side: Side, ca: trustme.CA, tmp_path: Path
) -> None:
    client = Side(tmp_path / "client", "retriever").write(ca.issue_cert("retriever"), ca)
    address = mtls_server.address
    services = ModelServices(address, address, address, 1024 * 1024, tls=client.client_files())
    encoder = mtls_server.encoder
    try:
        assert (await services.encoder.model_info(Budget.starting_now(10))).embedding_dim == 7
        # A call in flight when the certificates change finishes on the channel it started on.
        encoder.release.clear()
        encoder.entered.clear()
        held = asyncio.create_task(services.encoder.model_info(Budget.starting_now(60)))
        await encoder.entered.wait()
        # New calls use the files as they are now, on a new channel (the old connection is still open): a
        # certificate the server's CA did not sign is refused ...
        stranger = trustme.CA()
        client.write(stranger.issue_cert("retriever"), stranger)
        with pytest.raises(DownstreamError) as refused:
            await services.encoder.model_info(Budget.starting_now(10))
        assert refused.value.downstream_code == "UNAVAILABLE"
        # ... and a new CA on both sides gets in.
        new_ca = trustme.CA()
        server_side.write(new_ca.issue_cert(LOOPBACK), new_ca)
        client.write(new_ca.issue_cert("retriever"), new_ca)
        encoder.release.set()
        assert (await services.encoder.model_info(Budget.starting_now(10))).embedding_dim == 7
        assert (await held).embedding_dim == 7
    finally:
        encoder.release.set()
        await services.close()


async def test_a_channel_without_a_client_certificate_is_refused_by_mtls(
    mtls_server: Server, server_side: Side, tmp_path: Path
) -> None:
    client = Side(tmp_path / "client", "retriever")
    _write(client.ca, server_side.ca.read_bytes())
    channel = open_channel(mtls_server.address, 1024 * 1024, tls=client.client_files(certificate=False))
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_retrievers_downstream_tls_settings_are_checked() -> None:
    assert RetrieverSettings().downstream_tls() is None
    with pytest.raises(
        ConfigError, match=r"CIR_RETRIEVER_DOWNSTREAM_TLS_CERT_FILE and .*_KEY_FILE go together"
    ):
        RetrieverSettings(downstream_tls_ca_file="ca.pem", downstream_tls_cert_file="r.crt")
    with pytest.raises(ConfigError, match="needs TLS: set CIR_RETRIEVER_DOWNSTREAM_TLS_CA_FILE"):
        RetrieverSettings(downstream_tls_cert_file="r.crt", downstream_tls_key_file="r.key")
    files = RetrieverSettings(
        downstream_tls_ca_file="ca.pem", downstream_tls_cert_file="r.crt", downstream_tls_key_file="r.key"
    ).downstream_tls()
    assert files is not None and (files.cert_file, files.key_file, files.ca_file) == (
        "r.crt",
        "r.key",
        "ca.pem",
    )
    assert RetrieverSettings(downstream_tls_ca_file="ca.pem").downstream_tls() == TlsFiles(
        ca_file="ca.pem", names=files.names
    )


# --- the images' health check ------------------------------------------------------------------------------


async def _healthcheck(environ: dict[str, str], *args: str) -> int:
    """deploy/docker/healthcheck.py run as the images run it, with `environ` as the service's environment."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HEALTHCHECK),
        *args,
        env=environ,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_the_health_check_probes_an_mtls_port_with_the_services_own_certificate(
    mtls_server: Server, server_side: Side
) -> None:
    prefix = ENCODER.env_prefix
    args = ("encoder", "--address", mtls_server.address)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CIR_", "GRPC_"))}
    assert await _healthcheck(environ, *args) == 1  # plaintext: refused
    environ |= {
        f"{prefix}TLS_CERT_FILE": str(server_side.cert),
        f"{prefix}TLS_KEY_FILE": str(server_side.key),
        f"{prefix}TLS_CLIENT_CA_FILE": str(server_side.ca),
    }
    assert await _healthcheck(environ, *args) == 0
    # The server's CA from CIR_TLS_CA_FILE instead of the client CA: a wrong one fails the check.
    stranger = server_side.ca.with_name("stranger.pem")
    _write(stranger, trustme.CA().cert_pem.bytes())
    assert await _healthcheck({**environ, CA_FILE_ENV: str(stranger)}, *args) == 1


# --- the cache: rediss:// with a password ------------------------------------------------------------------


@pytest.fixture
def start_redis() -> Iterator[Callable[..., RedisProcess]]:
    """Private redis-servers (`start_redis(tls=..., password=...)`), all stopped after the test."""
    if redis_server_binary() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    started: list[RedisProcess] = []

    def start(**options: Any) -> RedisProcess:
        started.append(start_redis_process(**options))
        return started[-1]

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def redis_tls(tmp_path: Path, ca: trustme.CA) -> RedisTls:
    side = Side(tmp_path / "redis", "redis").write(ca.issue_cert(LOOPBACK), ca)
    return RedisTls(str(side.cert), str(side.key), str(side.ca))


async def test_a_rediss_cache_with_a_password_works_against_a_tls_redis(
    start_redis, redis_tls: RedisTls
) -> None:
    server = start_redis(tls=redis_tls, password="s3cret/p@ss")
    assert server.url == f"rediss://:s3cret%2Fp%40ss@127.0.0.1:{server.port}/0"
    settings = ServiceSettings(cache_url=server.url, cache_tls_ca_file=redis_tls.ca_file)
    cache = cache_from_settings(settings)
    assert isinstance(cache, RedisCache) and "s3cret" not in cache.describe()
    raw = aioredis.Redis.from_url(server.url, ssl_ca_certs=redis_tls.ca_file)
    try:
        await cache.set("tls:key", b"value")
        assert await cache.get("tls:key") == b"value"
        assert await raw.get("tls:key") == b"value"  # it is in Redis, not only in the in-process copy
        assert cache.stats()["errors"] == 0
    finally:
        await cache.close()
        await raw.aclose()


async def test_a_rediss_cache_that_cannot_verify_or_authenticate_falls_back(
    start_redis, redis_tls: RedisTls, tmp_path: Path
) -> None:
    server = start_redis(tls=redis_tls, password="s3cret")
    stranger = tmp_path / "stranger.pem"
    _write(stranger, trustme.CA().cert_pem.bytes())
    wrong_password = server.url.replace("s3cret", "wrong")
    for url, ca_file in ((server.url, str(stranger)), (wrong_password, redis_tls.ca_file)):
        cache = RedisCache(url, tls_ca_file=ca_file, connect_timeout_s=5.0, socket_timeout_s=5.0)
        try:
            await cache.set("tls:refused", b"value")
            assert await cache.get("tls:refused") == b"value"  # the in-process copy
            assert cache.stats()["errors"] >= 1 and cache.stats()["writes"] == 0
        finally:
            await cache.close()


def test_a_cache_ca_file_needs_a_rediss_url() -> None:
    settings = RetrieverSettings(cache_url="redis://127.0.0.1:6379/0", cache_tls_ca_file="ca.pem")
    with pytest.raises(ConfigError, match="CIR_RETRIEVER_CACHE_TLS_CA_FILE is for TLS to Redis"):
        cache_from_settings(settings)
