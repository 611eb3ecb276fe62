"""The Python client's credentials: CIR_API_KEY on every call, CIR_TLS_CA_FILE (and a client certificate).

A stand-in retriever on loopback (a plain grpc server with TLS from a test CA) answers ListCollections with
the authorization metadata it received, so the test sees what reached the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme

from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_client.retriever import Credentials, UsageError, connect
from cir_tools.cli import main as cir

KEY = "cir_client-test-key"


class _Echo(retriever_pb2_grpc.RetrieverServiceServicer):
    def ListCollections(self, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = dict(context.invocation_metadata())
        return retriever_pb2.ListCollectionsResponse(collections=[metadata.get("authorization", "<none>")])


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _serve(credentials: grpc.ServerCredentials) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    retriever_pb2_grpc.add_RetrieverServiceServicer_to_server(_Echo(), server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def tls_server(ca, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A TLS server: its address and the path of its CA (PEM)."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    key_pem, chain_pem = cert.private_key_pem.bytes(), b"".join(b.bytes() for b in cert.cert_chain_pems)
    server, address = _serve(grpc.ssl_server_credentials([(key_pem, chain_pem)]))
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        yield address, ca_file
    finally:
        server.stop(grace=None)


def _seen(stub: retriever_pb2_grpc.RetrieverServiceStub) -> str:
    return stub.ListCollections(retriever_pb2.ListCollectionsRequest(), timeout=30).collections[0]


def test_cir_api_key_and_cir_tls_ca_file_come_from_the_environment(tls_server, monkeypatch):
    address, ca_file = tls_server
    monkeypatch.setenv("CIR_TLS_CA_FILE", str(ca_file))
    monkeypatch.setenv("CIR_API_KEY", KEY)
    assert _seen(connect(address)) == f"Bearer {KEY}"
    monkeypatch.delenv("CIR_API_KEY")
    assert _seen(connect(address)) == "<none>"


def test_the_cir_command_sends_them(tls_server, monkeypatch, capsys):
    address, ca_file = tls_server
    monkeypatch.setenv("CIR_TLS_CA_FILE", str(ca_file))
    monkeypatch.setenv("CIR_API_KEY", KEY)
    assert cir(["collections", "list", "--address", address]) == 0
    assert capsys.readouterr().out.strip() == f"Bearer {KEY}"


def test_without_the_ca_a_tls_server_is_not_trusted(tls_server):
    address, _ = tls_server
    with pytest.raises(grpc.RpcError) as refused:
        connect(address, Credentials(api_key=KEY)).ListCollections(
            retriever_pb2.ListCollectionsRequest(), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_certificate_for_mtls(ca, tmp_path):
    server_cert = ca.issue_cert("127.0.0.1")
    server, address = _serve(
        grpc.ssl_server_credentials(
            [(server_cert.private_key_pem.bytes(), b"".join(b.bytes() for b in server_cert.cert_chain_pems))],
            root_certificates=ca.cert_pem.bytes(),
            require_client_auth=True,
        )
    )
    try:
        ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key"
        ca.cert_pem.write_to_path(str(ca_file))
        client = ca.issue_cert("cir-client")
        client.cert_chain_pems[0].write_to_path(str(cert_file))
        client.private_key_pem.write_to_path(str(key_file))
        with pytest.raises(grpc.RpcError):  # no client certificate: the handshake fails
            _seen(connect(address, Credentials(tls_ca_file=str(ca_file))))
        mtls = Credentials(
            api_key=KEY, tls_ca_file=str(ca_file), tls_cert_file=str(cert_file), tls_key_file=str(key_file)
        )
        assert _seen(connect(address, mtls)) == f"Bearer {KEY}"
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"CIR_TLS_CA_FILE": "/no/such/ca.pem"}, "CIR_TLS_CA_FILE=/no/such/ca.pem: cannot read it"),
        ({"CIR_TLS_CERT_FILE": "c.pem"}, "CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE go together"),
        ({"CIR_TLS_CERT_FILE": "c.pem", "CIR_TLS_KEY_FILE": "k.pem"}, "set CIR_TLS_CA_FILE too"),
        ({"CIR_API_KEY": "two words"}, "CIR_API_KEY holds spaces"),
    ],
)
def test_bad_client_settings_say_what_to_fix(environ, expected):
    with pytest.raises(UsageError, match=expected):
        connect("127.0.0.1:9", Credentials.from_environment(environ))


def test_the_key_is_trimmed_and_unset_variables_are_off():
    credentials = Credentials.from_environment({"CIR_API_KEY": f" {KEY}\n"})
    assert credentials == Credentials(api_key=KEY)
