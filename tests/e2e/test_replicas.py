"""Stateless retriever replicas: two retriever processes on one Milvus engine see each other's writes.

A suite without the reasoner (no LLM stage is needed here): encoder, captioner, one retriever on a local
Milvus engine (milvus-lite's server), and a second retriever process started by the test on the same engine.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image, ImageDraw

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import connect, index_folder, search_request
from cir_tools.local_redis import free_port
from cir_tools.local_suite import LocalSuite

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite(tiny_pack, tmp_path_factory):
    suite = LocalSuite(profile=tiny_pack, workdir=tmp_path_factory.mktemp("replicas"), store="milvus")
    suite.start(timeout_s=400, names=("encoder", "captioner", "retriever"))
    yield suite
    suite.stop()


def _square(colour: tuple[int, int, int], background: tuple[int, int, int] = (245, 245, 240)) -> Image.Image:
    image = Image.new("RGB", (72, 72), background)
    ImageDraw.Draw(image).rectangle((18, 18, 54, 54), fill=colour)
    return image


def _ranking(response: retriever_pb2.SearchResponse) -> list[tuple[str, float]]:
    return [(hit.id, round(hit.score, 5)) for hit in response.hits]


def test_two_retriever_replicas_on_one_milvus_see_each_others_writes(suite, tmp_path):
    """Stateless replicas: ingest, delete and replace through one; the other sees each at once."""
    port = free_port()
    env = {**suite.environment("retriever"), "CIR_RETRIEVER_PORT": str(port)}
    with (tmp_path / "replica.log").open("wb") as log:
        replica = subprocess.Popen(
            [sys.executable, "-m", "cir_retriever"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_serving(f"127.0.0.1:{port}", replica, tmp_path / "replica.log")
        stub = connect(suite.retriever_address)
        other = connect(f"127.0.0.1:{port}")
        few = tmp_path / "few"
        few.mkdir()
        for index in range(8):
            _square((40 * index, 255 - 30 * index, 90)).save(few / f"r-{index}.png")
        assert index_folder(stub, "replicated", few).counts == {"indexed": 8}
        info = other.GetCollectionInfo(retriever_pb2.GetCollectionInfoRequest(collection="replicated"))
        assert (
            info.size == 8
            and "replicated" in other.ListCollections(retriever_pb2.ListCollectionsRequest()).collections
        )

        def ranking(client, **kwargs):
            request = search_request("replicated", "in blue", strategy="image_only", top_k=8, **kwargs)
            return _ranking(client.Search(request, timeout=60))

        assert ranking(other, reference_id="r-3") == ranking(stub, reference_id="r-3")
        other.DeleteImages(retriever_pb2.DeleteImagesRequest(collection="replicated", ids=["r-5"]))
        assert "r-5" not in [i for i, _ in ranking(stub, reference_id="r-3")]
        _square((0, 0, 0), background=(255, 255, 255)).save(few / "r-1.png")
        assert index_folder(stub, "replicated", few).counts == {"unchanged": 6, "replaced": 1, "indexed": 1}
        top = ranking(other, image=few / "r-1.png")[0]
        assert top[0] == "r-1" and top[1] == pytest.approx(1.0, abs=1e-4)  # the new bytes, seen by the other
        stub.DeleteCollection(retriever_pb2.DeleteCollectionRequest(collection="replicated"))
        assert "replicated" not in other.ListCollections(retriever_pb2.ListCollectionsRequest()).collections
    finally:
        replica.terminate()
        try:
            replica.wait(timeout=30)
        except subprocess.TimeoutExpired:
            replica.kill()
            replica.wait(timeout=10)


def _wait_serving(address: str, process: subprocess.Popen, log_path: Path) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):  # a state, with a generous bound
            assert process.poll() is None, log_path.read_text()
            try:
                request = health_pb2.HealthCheckRequest(service="cir.retriever.v1.RetrieverService")
                if health.Check(request, timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise AssertionError(f"the replica never became SERVING:\n{log_path.read_text()}")
