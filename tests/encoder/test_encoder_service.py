"""EncoderService over real gRPC on loopback, with the tiny pack loaded through the production code."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from support.profiles import settings_from_profile
from support.server_thread import ServerThread

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.cache import MemoryCache
from cir_common.errors import ConfigError
from cir_common.vectors import vector_from_proto
from cir_encoder.__main__ import SERVICE_NAME
from cir_encoder.core import build_engine
from cir_encoder.phi import Phi
from cir_encoder.service import EncoderServicer
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings

FLOATS = common_pb2.VECTOR_FORMAT_FLOATS
PACKED = common_pb2.VECTOR_FORMAT_PACKED_F32


def _settings(profile, **overrides) -> EncoderSettings:
    return settings_from_profile(EncoderSettings, SECTION, ENV_PREFIX, profile, **overrides)


def _png(seed: int, size: tuple[int, int] = (80, 60)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _image(seed: int, size: tuple[int, int] = (80, 60)) -> common_pb2.Image:
    return common_pb2.Image(data=_png(seed, size))


def _matrix(vectors) -> np.ndarray:
    return np.stack([vector_from_proto(v) for v in vectors])


def _text_matrix(embeddings) -> np.ndarray:
    return _matrix([e.embedding for e in embeddings])


@pytest.fixture(scope="module")
def placeholder_phi(tiny_pack, tiny_clip, tmp_path_factory):
    """A LinCIR-format Phi whose output is always the placeholder's own token embedding."""
    phi = Phi(tiny_clip.embed_dim, tiny_clip.text_width)
    with torch.no_grad():
        phi.layers[6].weight.zero_()
        phi.layers[6].bias.copy_(tiny_clip.model.token_embedding.weight[259])
    path = tmp_path_factory.mktemp("phi") / "identity-phi.pt"
    torch.save({"Phi": phi.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def encoder(tiny_pack, placeholder_phi):
    settings = _settings(tiny_pack, port=0, max_items_per_request=16, batch_window_ms=20.0)
    settings.mapping_networks = {**settings.mapping_networks, "placeholder": str(placeholder_phi)}
    servicer = EncoderServicer(settings, cache=MemoryCache(64 * 1024 * 1024))

    def register(host):
        encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, host.server)
        return servicer.load

    server = ServerThread(SERVICE_NAME, settings, register)
    channel = server.channel()
    health = health_pb2_grpc.HealthStub(channel)
    before = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    server.load_and_serve()
    after = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME)).status
    server.health_transitions = (before, after)
    server.servicer = servicer
    server.stub = encoder_pb2_grpc.EncoderServiceStub(channel)
    yield server
    channel.close()
    server.stop()


def test_health_turns_serving_only_after_the_model_loaded(encoder):
    assert encoder.health_transitions == (
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    )


def test_model_info(encoder):
    info = encoder.stub.GetModelInfo(encoder_pb2.GetModelInfoRequest())
    assert info.model.name == "cir-tiny-clip"
    assert len(info.model.revision) == 64
    assert (info.embedding_dim, info.text_width, info.context_length) == (32, 64, 77)
    assert info.placeholder_token_id == 259
    assert info.default_preprocessing == encoder_pb2.PREPROCESSING_TARGETPAD
    assert {n.name for n in info.mapping_networks} == {"lincir", "searle", "pic2word", "placeholder"}
    assert {n.model.family for n in info.mapping_networks if n.name == "pic2word"} == {"pic2word"}
    assert [n.name for n in info.mapping_networks if n.is_default] == ["lincir"]
    assert info.device == "cpu"
    assert not info.normalized_by_default


def _batched_and_one_at_a_time(call, build, items, read) -> tuple[np.ndarray, np.ndarray]:
    """The vectors of one request holding every item, and of one request per item."""
    batched = read(call(build(items)).embeddings)
    singles = np.stack([read(call(build([item])).embeddings)[0] for item in items])
    return batched, singles


def test_batched_images_texts_and_prompts_equal_one_at_a_time(encoder):
    stub = encoder.stub
    images = [_image(seed, size) for seed, size in enumerate([(80, 60), (30, 90), (64, 64), (200, 50)])]
    batched, singles = _batched_and_one_at_a_time(
        stub.EmbedImages,
        lambda items: encoder_pb2.EmbedImagesRequest(images=items, vector_format=FLOATS, bypass_cache=True),
        images,
        _matrix,
    )
    assert batched.shape == (4, 32) and np.linalg.norm(batched, axis=1).min() > 0
    np.testing.assert_allclose(batched, singles, atol=1e-5)

    texts = ["a red dress", "a photo of $ that is blue", "the same street at night without people", "$"]
    batched, singles = _batched_and_one_at_a_time(
        stub.EmbedTexts,
        lambda items: encoder_pb2.EmbedTextsRequest(texts=items, bypass_cache=True),
        texts,
        _text_matrix,
    )
    np.testing.assert_allclose(batched, singles, atol=1e-5)

    prompts = [
        encoder_pb2.ComposedPrompt(text=text, reference_image=_image(seed))
        for seed, text in enumerate(["a photo of $ that is red", "$ at night", "a $ and a $ together"])
    ]
    batched, singles = _batched_and_one_at_a_time(
        stub.EmbedComposedPrompts,
        lambda items: encoder_pb2.EmbedComposedPromptsRequest(prompts=items),
        prompts,
        _text_matrix,
    )
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    assert len({row.tobytes() for row in batched}) == len(prompts)


def test_normalize_and_formats(encoder):
    images = [_image(10), _image(11)]
    raw = encoder.stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=images, vector_format=PACKED))
    unit = encoder.stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=images, normalize=True))
    assert raw.embeddings[0].packed_f32le and not raw.embeddings[0].values
    raw_m, unit_m = _matrix(raw.embeddings), _matrix(unit.embeddings)
    np.testing.assert_allclose(np.linalg.norm(unit_m, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit_m, raw_m / np.linalg.norm(raw_m, axis=1, keepdims=True), atol=1e-6)
    assert unit.normalized and not raw.normalized


def test_concurrent_callers_each_get_their_own_results(encoder):
    seeds = list(range(20, 32))
    expected = {
        seed: _matrix(
            encoder.stub.EmbedImages(
                encoder_pb2.EmbedImagesRequest(images=[_image(seed)], bypass_cache=True)
            ).embeddings
        )[0]
        for seed in seeds
    }
    texts = [f"a photo number {i}" for i in range(12)]
    expected_texts = {
        t: vector_from_proto(
            encoder.stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=[t], bypass_cache=True))
            .embeddings[0]
            .embedding
        )
        for t in texts
    }
    batches_before = encoder.servicer.core.stats().images.batches

    def image_call(seed):
        request = encoder_pb2.EmbedImagesRequest(images=[_image(seed)], bypass_cache=True)
        return seed, _matrix(encoder.stub.EmbedImages(request).embeddings)[0]

    def text_call(text):
        response = encoder.stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=[text], bypass_cache=True))
        return text, vector_from_proto(response.embeddings[0].embedding)

    with ThreadPoolExecutor(max_workers=12) as pool:
        image_results = list(pool.map(image_call, seeds))
        text_results = list(pool.map(text_call, texts))
    for seed, vector in image_results:
        np.testing.assert_allclose(vector, expected[seed], atol=1e-5)
    for text, vector in text_results:
        np.testing.assert_allclose(vector, expected_texts[text], atol=1e-5)
    # 12 concurrent single-image calls shared model calls
    assert encoder.servicer.core.stats().images.batches - batches_before < len(seeds)


def test_texts_report_truncation(encoder):
    long_text = " ".join(["word"] * 120)
    response = encoder.stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=["a red dress", long_text]))
    short, long_ = response.embeddings
    assert (short.truncated, short.token_count) == (False, 5)
    assert long_.truncated and long_.token_count == 122


def test_second_identical_call_is_served_from_cache_with_identical_bytes(encoder):
    request = encoder_pb2.EmbedImagesRequest(images=[_image(40), _image(41)], vector_format=PACKED)
    first = encoder.stub.EmbedImages(request)
    second = encoder.stub.EmbedImages(request)
    assert list(first.cache_hits) == [False, False]
    assert list(second.cache_hits) == [True, True]
    assert [v.packed_f32le for v in first.embeddings] == [v.packed_f32le for v in second.embeddings]
    texts = encoder_pb2.EmbedTextsRequest(texts=["cached text"], vector_format=PACKED)
    first_t, second_t = encoder.stub.EmbedTexts(texts), encoder.stub.EmbedTexts(texts)
    assert (first_t.embeddings[0].cache_hit, second_t.embeddings[0].cache_hit) == (False, True)
    assert first_t.embeddings[0].embedding.packed_f32le == second_t.embeddings[0].embedding.packed_f32le


def test_composed_prompt_with_the_placeholders_own_token_equals_the_plain_text(encoder):
    texts = ["a photo of $ that is red", "$ on a beach"]
    plain = encoder.stub.EmbedTexts(encoder_pb2.EmbedTextsRequest(texts=texts, bypass_cache=True))
    composed = encoder.stub.EmbedComposedPrompts(
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[
                encoder_pb2.ComposedPrompt(text=t, reference_image=_image(50 + i))
                for i, t in enumerate(texts)
            ],
            mapping_network="placeholder",
            return_pseudo_tokens=True,
        )
    )
    np.testing.assert_allclose(
        _matrix([e.embedding for e in composed.embeddings]),
        _matrix([e.embedding for e in plain.embeddings]),
        atol=1e-5,
    )
    assert composed.mapping_network.name == "placeholder"
    assert len(composed.pseudo_tokens) == 2 and composed.pseudo_tokens[0].dim == 64


def test_composed_prompt_from_image_equals_prompt_from_its_raw_embedding(encoder, tiny_pack):
    image = _image(60)
    raw = encoder.stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[image])).embeddings[0]
    by_image = encoder.stub.EmbedComposedPrompts(
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="a photo of $ that is red", reference_image=image)],
            return_pseudo_tokens=True,
        )
    )
    by_vector = encoder.stub.EmbedComposedPrompts(
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="a photo of $ that is red", reference_embedding=raw)],
            return_pseudo_tokens=True,
        )
    )
    assert by_image.mapping_network.name == "lincir"
    np.testing.assert_allclose(
        vector_from_proto(by_image.embeddings[0].embedding),
        vector_from_proto(by_vector.embeddings[0].embedding),
        atol=1e-6,
    )
    # the token is Phi(raw image embedding), computed directly with the loaded network
    engine = encoder.servicer.core.engine
    _, phi = engine.resolve_mapping_network("lincir")
    with torch.inference_mode():
        token = phi.module(torch.from_numpy(vector_from_proto(raw))[None])[0].numpy()
    np.testing.assert_allclose(vector_from_proto(by_image.pseudo_tokens[0]), token, atol=1e-5)


def _code(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call(request)
    return err.value.code(), err.value.details()


def test_bad_inputs_get_clear_status_codes(encoder):
    stub = encoder.stub
    code, message = _code(stub.EmbedImages, encoder_pb2.EmbedImagesRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images is empty" in message

    code, message = _code(
        stub.EmbedImages,
        encoder_pb2.EmbedImagesRequest(images=[_image(1), common_pb2.Image(data=b"not an image")]),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images[1]" in message

    code, message = _code(stub.EmbedImages, encoder_pb2.EmbedImagesRequest(images=[_image(1)] * 17))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 16" in message
    assert "CIR_ENCODER_MAX_ITEMS_PER_REQUEST" in message

    code, message = _code(
        stub.EmbedComposedPrompts,
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="a photo that is red", reference_image=_image(1))]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no placeholder '$'" in message

    # A "$" past the 77-token context is cut off by the tokenizer: nothing would be injected.
    code, message = _code(
        stub.EmbedComposedPrompts,
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[
                encoder_pb2.ComposedPrompt(text="a photo of " + "very " * 80 + "$", reference_image=_image(1))
            ]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "no placeholder token" in message
    assert "past the first 77 tokens" in message

    code, message = _code(
        stub.EmbedComposedPrompts,
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="a photo of $, red", reference_image=_image(1))]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "joined to the characters beside it" in message

    code, message = _code(
        stub.EmbedComposedPrompts,
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="$", reference_image=_image(1))], mapping_network="nope"
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown mapping_network 'nope'" in message

    bad_dim = common_pb2.Vector(values=[0.1] * 5, dim=5)
    code, message = _code(
        stub.EmbedComposedPrompts,
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="$", reference_embedding=bad_dim)]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "reference_embedding" in message

    code, message = _code(stub.EmbedTexts, encoder_pb2.EmbedTextsRequest(texts=["x" * 5000]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "CIR_ENCODER_MAX_TEXT_CHARS" in message


def test_a_mapping_network_that_does_not_fit_the_clip_model_is_refused(tiny_pack, tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"Phi": Phi(48, 64).state_dict()}, path)
    settings = _settings(tiny_pack)
    settings.mapping_networks = {"wrong": str(path)}
    settings.default_mapping_network = "wrong"
    with pytest.raises(ConfigError, match="48"):
        build_engine(settings)


def test_a_reference_embedding_too_large_for_the_model_is_refused_not_answered_with_nan(encoder, monkeypatch):
    stub = encoder.stub
    dim = encoder.servicer.core.engine.clip.embed_dim
    huge = common_pb2.Vector(values=[3e38] + [0.0] * (dim - 1))  # finite float32, but overflows the model
    code, message = _code(
        stub.EmbedComposedPrompts,
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="a photo of $", reference_embedding=huge)]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompts[0].reference_embedding has norm 3e+38" in message and "EmbedImages" in message

    # a reference of ordinary size is still answered, with finite vectors
    raw = stub.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[_image(61)])).embeddings[0]
    answer = stub.EmbedComposedPrompts(
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[encoder_pb2.ComposedPrompt(text="a photo of $", reference_embedding=raw)]
        )
    )
    assert np.isfinite(_text_matrix(answer.embeddings)).all()

    # whatever the cause, a non-finite result is refused, never answered OK
    engine = encoder.servicer.core.engine
    real = engine.embed_composed

    def overflowing(token_ids, pseudo_tokens):
        features = real(token_ids, pseudo_tokens)
        features[-1, 0] = np.nan
        return features

    monkeypatch.setattr(engine, "embed_composed", overflowing)
    code, message = _code(
        stub.EmbedComposedPrompts,
        encoder_pb2.EmbedComposedPromptsRequest(
            prompts=[
                encoder_pb2.ComposedPrompt(text="a photo of $", reference_embedding=raw),
                encoder_pb2.ComposedPrompt(text="a photo of $ in red", reference_embedding=raw),
            ]
        ),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompts[1]: the composed embedding is not finite" in message
