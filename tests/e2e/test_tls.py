"""TLS across the suite: service processes on TLS ports, mTLS between the retriever and the model services,
the cache on a TLS Redis with a password, and certificates rotated under the running processes.

A suite without the reasoner (no LLM stage is needed): the encoder and the captioner on mTLS ports, the
retriever on a TLS port with a client certificate for its calls to them, and Redis on TLS with a password
(every service's cache is a rediss:// URL). Certificates are made here (trustme), each naming 127.0.0.1; the
local suite's start-up wait probes the TLS ports as the images' health check does.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest
import redis
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_client.retriever import index_folder, search_request
from cir_common.tls import CA_FILE_ENV
from cir_common.vocabulary import SERVICES, Service
from cir_tools.local_redis import RedisTls
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow

COLLECTION = "tls"
MODEL_SERVICES = ("encoder", "captioner")
LOOPBACK = "127.0.0.1"


def _write(path: Path, data: bytes) -> None:
    """Replace `path` at once, as a rotation does (a new file renamed over the old one)."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


class Pki:
    """The suite's PEM files, one folder per role: cert.pem, key.pem and ca.pem (the CA it trusts)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def files(self, role: str) -> tuple[Path, Path, Path]:
        folder = self.root / role
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "cert.pem", folder / "key.pem", folder / "ca.pem"

    def issue(self, role: str, ca: trustme.CA) -> None:
        cert, key, trusted = self.files(role)
        issued = ca.issue_cert(LOOPBACK)
        _write(cert, issued.cert_chain_pems[0].bytes())
        _write(key, issued.private_key_pem.bytes())
        _write(trusted, ca.cert_pem.bytes())


def _environment(pki: Pki) -> dict[str, str]:
    env = {}
    for name in (*MODEL_SERVICES, "retriever"):
        prefix = SERVICES[Service(name)].env_prefix
        cert, key, ca = pki.files(name)
        env |= {f"{prefix}TLS_CERT_FILE": str(cert), f"{prefix}TLS_KEY_FILE": str(key)}
        if name in MODEL_SERVICES:
            env[f"{prefix}TLS_CLIENT_CA_FILE"] = str(ca)  # mTLS
    cert, key, ca = pki.files("downstream")
    env |= {
        "CIR_RETRIEVER_DOWNSTREAM_TLS_CA_FILE": str(ca),
        "CIR_RETRIEVER_DOWNSTREAM_TLS_CERT_FILE": str(cert),
        "CIR_RETRIEVER_DOWNSTREAM_TLS_KEY_FILE": str(key),
        # The retriever's port has no client CA: its probe checks the port against this CA.
        CA_FILE_ENV: str(pki.files("retriever")[2]),
    }
    return env


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA) -> Pki:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    for role in (*MODEL_SERVICES, "retriever", "downstream", "redis"):
        pki.issue(role, ca)
    return pki


@pytest.fixture(scope="module")
def suite(tiny_pack, tmp_path_factory, pki: Pki):
    cert, key, ca = pki.files("redis")
    suite = LocalSuite(
        profile=tiny_pack,
        workdir=tmp_path_factory.mktemp("tls"),
        extra_env=_environment(pki),
        redis_tls=RedisTls(str(cert), str(key), str(ca)),
        redis_password="tls-suite/secret",
    )
    suite.start(timeout_s=400, names=(*MODEL_SERVICES, "retriever"))
    yield suite
    suite.stop()


@pytest.fixture(scope="module")
def stub(suite: LocalSuite, pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    credentials = grpc.ssl_channel_credentials(pki.files("retriever")[2].read_bytes())
    with grpc.secure_channel(suite.retriever_address, credentials) as channel:
        stub = retriever_pb2_grpc.RetrieverServiceStub(channel)
        gallery = tmp_path_factory.mktemp("gallery")
        for index in range(6):
            _square((40 * index, 255 - 30 * index, 90)).save(gallery / f"t-{index}.png")
        assert index_folder(stub, COLLECTION, gallery).counts == {"indexed": 6}
        yield stub


def _square(colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (72, 72), (245, 245, 240))
    ImageDraw.Draw(image).rectangle((18, 18, 54, 54), fill=colour)
    return image


def _search(stub, tmp_path: Path) -> retriever_pb2.SearchResponse:
    query = tmp_path / "query.png"
    _square((80, 195, 90)).save(query)
    request = search_request(COLLECTION, "in blue", image=query, strategy="image_only", top_k=3)
    return stub.Search(request, timeout=120)


def _check(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """A health check on a new channel (a new connection, a new handshake): OK or the failure's code."""
    channel = (
        grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def _client(trusted: trustme.CA, issued: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    if issued is None:
        return grpc.ssl_channel_credentials(trusted.cert_pem.bytes())
    return grpc.ssl_channel_credentials(
        trusted.cert_pem.bytes(), issued.private_key_pem.bytes(), issued.cert_chain_pems[0].bytes()
    )


def test_a_search_goes_over_tls_and_mtls_and_the_cache_is_a_tls_redis(suite, stub, pki, tmp_path):
    response = _search(stub, tmp_path)
    assert len(response.hits) == 3 and {hit.id for hit in response.hits} <= {f"t-{i}" for i in range(6)}
    assert suite.redis is not None and suite.redis.url.startswith("rediss://:tls-suite%2Fsecret@")
    cache = redis.Redis.from_url(suite.redis.url, ssl_ca_certs=str(pki.files("redis")[2]))
    try:
        # The model services write their results through rediss://, just behind their answers.
        deadline = time.monotonic() + 60
        while cache.dbsize() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.dbsize() > 0
    finally:
        cache.close()


def test_the_ports_refuse_plaintext_and_the_model_services_unknown_certificates(suite, ca):
    stranger = trustme.CA()
    for name in MODEL_SERVICES:
        address = f"{LOOPBACK}:{suite.ports[name]}"
        assert _check(address, _client(ca, ca.issue_cert("a-client"))) == grpc.StatusCode.OK
        assert _check(address, None) == grpc.StatusCode.UNAVAILABLE
        assert _check(address, _client(ca)) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        assert _check(address, _client(ca, stranger.issue_cert("a-client"))) == grpc.StatusCode.UNAVAILABLE
    assert _check(suite.retriever_address, None) == grpc.StatusCode.UNAVAILABLE
    assert _check(suite.retriever_address, _client(ca)) == grpc.StatusCode.OK


def test_a_new_ca_for_both_sides_takes_effect_without_a_restart(suite, stub, pki, ca, tmp_path):
    pids = {name: process.process.pid for name, process in suite.processes.items()}
    _search(stub, tmp_path)
    new_ca = trustme.CA()
    # The retriever's side first: its next calls use the new files on new channels, which do not trust the
    # model services' certificates yet, so a search fails (the old connections would still have worked).
    pki.issue("downstream", new_ca)
    with pytest.raises(grpc.RpcError) as refused:
        _search(stub, tmp_path)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # Then the model services: certificate, key and client CA; and a freshly issued client certificate for the
    # retriever (new files: a new channel, with no reconnection back-off left from the refusals).
    for name in MODEL_SERVICES:
        pki.issue(name, new_ca)
    pki.issue("downstream", new_ca)
    assert len(_search(stub, tmp_path).hits) == 3
    for name in MODEL_SERVICES:
        address = f"{LOOPBACK}:{suite.ports[name]}"
        assert _check(address, _client(new_ca, new_ca.issue_cert("a-client"))) == grpc.StatusCode.OK
        assert _check(address, _client(ca, ca.issue_cert("a-client"))) == grpc.StatusCode.UNAVAILABLE
    assert {name: process.process.pid for name, process in suite.processes.items()} == pids
    assert all(process.process.poll() is None for process in suite.processes.values())
