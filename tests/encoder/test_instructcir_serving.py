"""InstructCIR served by the encoder over real gRPC on loopback: served vectors equal a direct forward pass
of the network, and a checkpoint that is missing or made for another CLIP stops the encoder at start."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from support.profiles import settings_from_profile
from support.server_thread import ServerThread

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.cache import MemoryCache
from cir_common.errors import ConfigError
from cir_common.vectors import vector_from_proto
from cir_common.vocabulary import Preprocessing
from cir_encoder.__main__ import SERVICE_NAME
from cir_encoder.clip_loading import LoadedClip, load_clip
from cir_encoder.instructcir import InstructCirConfig, InstructCirNetwork, save_instructcir
from cir_encoder.instructcir_serving import clip_identity
from cir_encoder.preprocessing import build_image_transform
from cir_encoder.service import EncoderServicer
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings
from cir_tools.packs.tiny_encoder import tiny_clip_config, write_open_clip

PACKED = common_pb2.VECTOR_FORMAT_PACKED_F32
TARGET_PAD_RATIO = 1.25
# (width, height): square, wide beyond the target-pad ratio (padded), tall
IMAGE_SIZES = [(64, 64), (200, 50), (40, 90)]
INSTRUCTIONS = ["make it red", "the same dog on a beach at night", "remove the people"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _png(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _images() -> list[bytes]:
    return [_png(seed, size) for seed, size in enumerate(IMAGE_SIZES)]


def _matrix(vectors) -> np.ndarray:
    return np.stack([vector_from_proto(v) for v in vectors])


def _network(clip: LoadedClip, *, fusion: bool, seed: int) -> InstructCirNetwork:
    """A random InstructCIR network whose online and target towers differ (as after training)."""
    torch.manual_seed(seed)
    network = InstructCirNetwork(clip.model, InstructCirConfig(predictor_hidden_dim=48, fusion=fusion))
    with torch.no_grad():
        for parameter in network.tower.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
        if network.fusion_logit is not None:
            network.fusion_logit.fill_(0.8)  # a learned weight, not the initial 0.5
    return network.eval()


def _save(network: InstructCirNetwork, clip: LoadedClip, path: Path) -> Path:
    save_instructcir(path, network, clip_identity=clip_identity(clip), training={"epochs": 1, "steps": 3})
    return path


@pytest.fixture(scope="module")
def fused_network(tiny_clip: LoadedClip) -> InstructCirNetwork:
    return _network(tiny_clip, fusion=True, seed=1)


@pytest.fixture(scope="module")
def fused_checkpoint(tiny_clip, fused_network, tmp_path_factory) -> Path:
    return _save(fused_network, tiny_clip, tmp_path_factory.mktemp("instructcir") / "fused.pt")


@pytest.fixture(scope="module")
def plain_checkpoint(tiny_clip, tmp_path_factory) -> Path:
    network = _network(tiny_clip, fusion=False, seed=2)
    return _save(network, tiny_clip, tmp_path_factory.mktemp("instructcir") / "plain.pt")


def _settings(profile: Path, checkpoint: Path | str) -> EncoderSettings:
    return settings_from_profile(
        EncoderSettings,
        SECTION,
        ENV_PREFIX,
        profile,
        port=0,
        max_items_per_request=8,
        batch_window_ms=10.0,
        instructcir_checkpoint=str(checkpoint),
    )


@contextmanager
def _served(settings: EncoderSettings) -> Iterator[ServerThread]:
    """A real encoder server on loopback, through the same start path as the other encoder tests."""
    servicer = EncoderServicer(settings, cache=MemoryCache(16 * 1024 * 1024))

    def register(host):
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
        return servicer.load

    server = ServerThread(SERVICE_NAME, settings, register)
    channel = server.channel()
    try:
        server.load_and_serve()
        server.stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        server.servicer = servicer
        yield server
    finally:
        channel.close()
        server.stop()


@pytest.fixture(scope="module")
def fused_encoder(tiny_pack, fused_checkpoint) -> Iterator[ServerThread]:
    with _served(_settings(tiny_pack, fused_checkpoint)) as server:
        yield server


def _direct_inputs(clip: LoadedClip, kind: Preprocessing) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels and token ids the encoder feeds the network: its preprocessing, the CLIP's tokenizer."""
    transform = build_image_transform(kind, clip.preprocess, TARGET_PAD_RATIO)
    pixels = torch.stack([transform(Image.open(io.BytesIO(data)).convert("RGB")) for data in _images()])
    return pixels, clip.tokenizer(INSTRUCTIONS)


def _queries() -> list[encoder_pb2.InstructCirQuery]:
    return [
        encoder_pb2.InstructCirQuery(reference_image=common_pb2.Image(data=data), text=text)
        for data, text in zip(_images(), INSTRUCTIONS, strict=True)
    ]


@pytest.mark.parametrize("kind", [Preprocessing.TARGETPAD, Preprocessing.MODEL_DEFAULT])
def test_served_queries_and_targets_equal_a_direct_forward_pass(
    fused_encoder, fused_network, tiny_clip, kind
):
    proto_kind = {
        Preprocessing.TARGETPAD: encoder_pb2.PREPROCESSING_TARGETPAD,
        Preprocessing.MODEL_DEFAULT: encoder_pb2.PREPROCESSING_MODEL_DEFAULT,
    }[kind]
    pixels, tokens = _direct_inputs(tiny_clip, kind)
    with torch.inference_mode():
        plain = fused_network.encode_query(pixels, tokens).numpy()
        fused = fused_network.fused_query(pixels, tokens).numpy()
        targets = fused_network.encode_target(pixels).numpy()
    stub = fused_encoder.stub

    served = stub.EmbedInstructCirQueries(
        encoder_pb2.EmbedInstructCirQueriesRequest(queries=_queries(), preprocessing=proto_kind)
    )
    assert (served.normalized, served.fused) == (False, False)
    np.testing.assert_allclose(_matrix(served.embeddings), plain, atol=1e-5)

    served_fused = stub.EmbedInstructCirQueries(
        encoder_pb2.EmbedInstructCirQueriesRequest(
            queries=_queries(), fused=True, preprocessing=proto_kind, vector_format=PACKED
        )
    )
    assert served_fused.fused and served_fused.normalized  # Eq. 3 is unit-norm by definition
    np.testing.assert_allclose(_matrix(served_fused.embeddings), fused, atol=1e-5)
    assert not np.allclose(fused, plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-3)

    served_targets = stub.EmbedInstructCirTargets(
        encoder_pb2.EmbedInstructCirTargetsRequest(
            images=[common_pb2.Image(data=data) for data in _images()], preprocessing=proto_kind
        )
    )
    np.testing.assert_allclose(_matrix(served_targets.embeddings), targets, atol=1e-5)
    assert (
        served_targets.model.revision
        == served.model.revision
        == fused_encoder.servicer.core.engine.instructcir.loaded.sha256
    )


def test_normalize_gives_the_unit_vectors_of_the_raw_ones(fused_encoder):
    stub = fused_encoder.stub
    images = [common_pb2.Image(data=data) for data in _images()]
    raw = _matrix(
        stub.EmbedInstructCirQueries(
            encoder_pb2.EmbedInstructCirQueriesRequest(queries=_queries())
        ).embeddings
    )
    unit_response = stub.EmbedInstructCirQueries(
        encoder_pb2.EmbedInstructCirQueriesRequest(queries=_queries(), normalize=True)
    )
    assert unit_response.normalized
    np.testing.assert_allclose(
        _matrix(unit_response.embeddings), raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6
    )
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-3)

    raw_targets = stub.EmbedInstructCirTargets(encoder_pb2.EmbedInstructCirTargetsRequest(images=images))
    unit_targets = stub.EmbedInstructCirTargets(
        encoder_pb2.EmbedInstructCirTargetsRequest(images=images, normalize=True)
    )
    assert unit_targets.normalized and not raw_targets.normalized
    raw_m = _matrix(raw_targets.embeddings)
    np.testing.assert_allclose(
        _matrix(unit_targets.embeddings), raw_m / np.linalg.norm(raw_m, axis=1, keepdims=True), atol=1e-6
    )


def test_targets_are_cached_by_image_and_checkpoint(fused_encoder):
    stub = fused_encoder.stub
    images = [common_pb2.Image(data=_png(70, (64, 64))), common_pb2.Image(data=_png(71, (80, 60)))]
    request = encoder_pb2.EmbedInstructCirTargetsRequest(images=images, vector_format=PACKED)
    first, second = stub.EmbedInstructCirTargets(request), stub.EmbedInstructCirTargets(request)
    assert list(first.cache_hits) == [False, False] and list(second.cache_hits) == [True, True]
    assert [v.packed_f32le for v in first.embeddings] == [v.packed_f32le for v in second.embeddings]
    bypassed = stub.EmbedInstructCirTargets(
        encoder_pb2.EmbedInstructCirTargetsRequest(images=images, vector_format=PACKED, bypass_cache=True)
    )
    assert list(bypassed.cache_hits) == [False, False]
    # the plain CLIP image embedding of the same images is another cache entry, not an InstructCIR one
    clip_images = stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=images, vector_format=PACKED))
    assert list(clip_images.cache_hits) == [False, False]


def test_model_info_and_truncation(fused_encoder, fused_checkpoint, fused_network):
    info = fused_encoder.stub.GetModelInfo(encoder_pb2.GetModelInfoRequest())
    assert info.HasField("instructcir")
    assert info.instructcir.model.name == fused_checkpoint.name
    assert info.instructcir.model.family == "instructcir"
    assert info.instructcir.model.revision == fused_encoder.servicer.core.engine.instructcir.loaded.sha256
    assert info.instructcir.model.details["path"] == str(fused_checkpoint)
    assert info.instructcir.embedding_dim == 32
    assert info.instructcir.has_fusion
    assert info.instructcir.fusion_weight == pytest.approx(fused_network.fusion_weight, abs=1e-6)

    image = common_pb2.Image(data=_png(80, (64, 64)))
    response = fused_encoder.stub.EmbedInstructCirQueries(
        encoder_pb2.EmbedInstructCirQueriesRequest(
            queries=[
                encoder_pb2.InstructCirQuery(reference_image=image, text="make it blue"),
                encoder_pb2.InstructCirQuery(reference_image=image, text=" ".join(["very"] * 100) + " red"),
            ]
        )
    )
    assert list(response.truncated) == [False, True]


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    return err.value.code(), err.value.details()


def test_bad_requests_get_clear_status_codes(fused_encoder):
    stub = fused_encoder.stub
    image = common_pb2.Image(data=_png(90, (64, 64)))
    query = encoder_pb2.InstructCirQuery(reference_image=image, text="make it red")

    code, message = _code(stub.EmbedInstructCirQueries, encoder_pb2.EmbedInstructCirQueriesRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "queries is empty" in message
    code, message = _code(stub.EmbedInstructCirTargets, encoder_pb2.EmbedInstructCirTargetsRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images is empty" in message

    code, message = _code(
        stub.EmbedInstructCirQueries, encoder_pb2.EmbedInstructCirQueriesRequest(queries=[query] * 9)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "CIR_ENCODER_MAX_ITEMS_PER_REQUEST" in message
    code, message = _code(
        stub.EmbedInstructCirTargets, encoder_pb2.EmbedInstructCirTargetsRequest(images=[image] * 9)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 8" in message

    long_text = encoder_pb2.InstructCirQuery(reference_image=image, text="x" * 5000)
    code, message = _code(
        stub.EmbedInstructCirQueries, encoder_pb2.EmbedInstructCirQueriesRequest(queries=[query, long_text])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "queries[1]" in message
    assert "CIR_ENCODER_MAX_TEXT_CHARS" in message

    empty_text = encoder_pb2.InstructCirQuery(reference_image=image, text="  ")
    code, message = _code(
        stub.EmbedInstructCirQueries, encoder_pb2.EmbedInstructCirQueriesRequest(queries=[empty_text])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "queries[0].text is empty" in message

    no_image = encoder_pb2.InstructCirQuery(text="make it red")
    code, message = _code(
        stub.EmbedInstructCirQueries, encoder_pb2.EmbedInstructCirQueriesRequest(queries=[query, no_image])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "queries[1] has no reference_image" in message

    broken = encoder_pb2.InstructCirQuery(reference_image=common_pb2.Image(data=b"not an image"), text="red")
    code, message = _code(
        stub.EmbedInstructCirQueries, encoder_pb2.EmbedInstructCirQueriesRequest(queries=[query, broken])
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "queries.reference_image[1]" in message


def test_fused_on_a_checkpoint_without_fusion_is_refused(tiny_pack, plain_checkpoint):
    with _served(_settings(tiny_pack, plain_checkpoint)) as server:
        info = server.stub.GetModelInfo(encoder_pb2.GetModelInfoRequest())
        assert info.HasField("instructcir") and not info.instructcir.has_fusion
        assert info.instructcir.fusion_weight == 0.0
        query = encoder_pb2.InstructCirQuery(reference_image=common_pb2.Image(data=_images()[0]), text="red")
        code, message = _code(
            server.stub.EmbedInstructCirQueries,
            encoder_pb2.EmbedInstructCirQueriesRequest(queries=[query], fused=True),
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "plain.pt has no fusion weight" in message and "fused=false" in message
        plain = server.stub.EmbedInstructCirQueries(
            encoder_pb2.EmbedInstructCirQueriesRequest(queries=[query])
        )
        assert len(plain.embeddings) == 1 and not plain.fused


def test_without_a_checkpoint_the_rpcs_name_the_setting(tiny_pack):
    with _served(_settings(tiny_pack, "")) as server:
        info = server.stub.GetModelInfo(encoder_pb2.GetModelInfoRequest())
        assert not info.HasField("instructcir")
        image = common_pb2.Image(data=_images()[0])
        for call, request in [
            (
                server.stub.EmbedInstructCirQueries,
                encoder_pb2.EmbedInstructCirQueriesRequest(
                    queries=[encoder_pb2.InstructCirQuery(reference_image=image, text="red")]
                ),
            ),
            (server.stub.EmbedInstructCirTargets, encoder_pb2.EmbedInstructCirTargetsRequest(images=[image])),
        ]:
            code, message = _code(call, request)
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert "CIR_ENCODER_INSTRUCTCIR_CHECKPOINT" in message
        # the rest of the encoder serves as before
        assert server.stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[image])).embeddings[0].dim == 32


def _start_fails(settings: EncoderSettings) -> str:
    with pytest.raises(ConfigError) as err, _served(settings):
        pass
    return err.value.message


def test_a_missing_checkpoint_stops_the_start_naming_the_file(tiny_pack, tmp_path):
    missing = tmp_path / "nowhere" / "instructcir.pt"
    message = _start_fails(_settings(tiny_pack, missing))
    assert str(missing) in message and "does not exist" in message and "cir-instructcir/1" in message


def test_a_checkpoint_for_another_clip_stops_the_start_naming_the_file(tiny_pack, tmp_path):
    other_dir = tmp_path / "other-clip"
    other_weights = write_open_clip(other_dir, "cir-tiny-clip", tiny_clip_config(), seed=123)
    other = load_clip("cir-tiny-clip", str(other_weights), str(other_dir), "cpu", "fp32")
    checkpoint = _save(_network(other, fusion=False, seed=3), other, tmp_path / "other.pt")
    message = _start_fails(_settings(tiny_pack, checkpoint))
    assert str(checkpoint) in message and "trained on" in message
    assert other.checkpoint_sha256 in message  # what it expects


def test_python_m_cir_encoder_refuses_to_start_with_a_missing_checkpoint(tiny_pack, tmp_path):
    missing = tmp_path / "instructcir.pt"
    env = {
        **os.environ,
        f"{ENV_PREFIX}PROFILE": str(tiny_pack),
        f"{ENV_PREFIX}PORT": "0",
        f"{ENV_PREFIX}INSTRUCTCIR_CHECKPOINT": str(missing),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cir_encoder"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 2, done.stderr
    assert "cannot start" in done.stderr and str(missing) in done.stderr


def test_a_half_precision_clip_serves_what_the_float32_one_does(tiny_pack, fused_checkpoint, fused_encoder):
    # The checkpoint names the CLIP's weights, not their precision: it serves on a bf16 replica too.
    settings = _settings(tiny_pack, fused_checkpoint)
    settings.precision = "bf16"
    requests = (
        encoder_pb2.EmbedInstructCirQueriesRequest(queries=_queries(), normalize=True),
        encoder_pb2.EmbedInstructCirTargetsRequest(
            images=[common_pb2.Image(data=data) for data in _images()], normalize=True, bypass_cache=True
        ),
    )
    expected = [
        _matrix(fused_encoder.stub.EmbedInstructCirQueries(requests[0]).embeddings),
        _matrix(fused_encoder.stub.EmbedInstructCirTargets(requests[1]).embeddings),
    ]
    with _served(settings) as server:
        served = [
            _matrix(server.stub.EmbedInstructCirQueries(requests[0]).embeddings),
            _matrix(server.stub.EmbedInstructCirTargets(requests[1]).embeddings),
        ]
    for half, full in zip(served, expected, strict=True):
        cosines = (half * full).sum(axis=1)
        assert cosines.min() > 0.98, cosines
