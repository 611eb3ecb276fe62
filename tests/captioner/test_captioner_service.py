"""CaptionerService over real gRPC on loopback, with the tiny BLIP-2 loaded through the production loader.

The spy on `generate` only records: every caption here comes from the real model.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from captioner_support import TEST_LIMITS, captioner_settings, start_captioner
from grpc_health.v1 import health_pb2
from PIL import Image

from cir.captioner.v1 import captioner_pb2
from cir.common.v1 import common_pb2
from cir_common.cache import RedisCache

NUCLEUS = captioner_pb2.DECODING_VARIANT_NUCLEUS
BEAM_SAMPLE = captioner_pb2.DECODING_VARIANT_BEAM_SAMPLE
DEFAULT_PROMPT = "a photo of"
# Colours the tiny random BLIP-2 captions differently under near-greedy decoding (checked where it matters).
COLOURS = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
SIZES = [(80, 60), (30, 90), (640, 20), (32, 32), (100, 100), (17, 300), (50, 70)]
# top_p this small keeps only the most likely token: sampling becomes deterministic without a seed.
NEAR_GREEDY = {"variant": NUCLEUS, "top_p": 1e-6, "max_new_tokens": 12}


def _encoded(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def _image(index: int, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> common_pb2.Image:
    return common_pb2.Image(data=_encoded(COLOURS[index], size, fmt))


def _request(images, num_captions=0, bypass_cache=True, **decoding) -> captioner_pb2.GenerateCaptionsRequest:
    return captioner_pb2.GenerateCaptionsRequest(
        images=images,
        num_captions=num_captions,
        decoding=captioner_pb2.DecodingParameters(**decoding),
        bypass_cache=bypass_cache,
    )


def _captions(response) -> list[list[str]]:
    return [list(result.captions) for result in response.results]


def test_health_turns_serving_only_after_the_model_loaded(captioner):
    assert captioner.health_transitions == (
        health_pb2.HealthCheckResponse.NOT_SERVING,
        health_pb2.HealthCheckResponse.SERVING,
    )


def test_model_info_reports_model_defaults_and_limits(captioner, tiny_pack):
    info = captioner.stub.GetModelInfo(captioner_pb2.GetModelInfoRequest())
    folder = Path(captioner.servicer.core.settings.model)
    weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert (info.model.name, info.model.revision, info.model.family) == (folder.name, weights, "blip2")
    assert info.model.details["image_size"] == "32x32"
    defaults = info.default_decoding
    assert defaults.variant == BEAM_SAMPLE
    assert defaults.top_p == pytest.approx(0.9) and defaults.temperature == 1.0
    assert (defaults.num_beams, defaults.max_length, defaults.min_length) == (15, 30, 1)
    assert not defaults.HasField("max_new_tokens") and not defaults.HasField("seed")
    assert defaults.prompt == DEFAULT_PROMPT
    assert info.default_num_captions == 15
    assert info.image_size == 32
    assert (info.max_images_per_request, info.max_num_captions, info.max_new_tokens) == (8, 20, 60)
    assert (info.device, info.dtype) == ("cpu", "float32")


def test_default_request_gives_n_stripped_captions_without_the_prompt(captioner):
    before = captioner.spy.count
    response = captioner.stub.GenerateCaptions(_request([_image(0), _image(1)], seed=7))
    captions = _captions(response)
    assert response.num_captions == 15
    assert [len(c) for c in captions] == [15, 15]
    for caption in (c for per_image in captions for c in per_image):
        assert caption == caption.strip()
        assert DEFAULT_PROMPT not in caption
    assert response.decoding.variant == BEAM_SAMPLE and response.decoding.seed == 7
    assert response.model.family == "blip2"
    assert {t.stage for t in response.timings} == {"decode", "generate"}
    # The prompt did reach the model, after one placeholder per query token: it was left out of the output.
    call = captioner.spy.calls[before]
    tokenizer = captioner.servicer.core.engine.blip2.processor.tokenizer
    prompt_ids = call.input_ids[0, captioner.servicer.core.engine.blip2.num_query_tokens :]
    assert tokenizer.decode(prompt_ids, skip_special_tokens=True) == DEFAULT_PROMPT


def test_a_custom_prompt_is_used_but_never_returned(captioner):
    prompt = "qqxj zvvk photo"
    before = captioner.spy.count
    response = captioner.stub.GenerateCaptions(_request([_image(2)], num_captions=4, seed=1, prompt=prompt))
    assert response.decoding.prompt == prompt
    (captions,) = _captions(response)
    assert len(captions) == 4 and all(prompt not in c and "qqxj" not in c for c in captions)
    tokenizer = captioner.servicer.core.engine.blip2.processor.tokenizer
    assert prompt in tokenizer.decode(captioner.spy.calls[before].input_ids[0], skip_special_tokens=True)


def test_each_variant_passes_its_published_generation_arguments(captioner):
    fixed = {"top_k": 50, "repetition_penalty": 1.0, "length_penalty": 1.0}
    expected = {
        NUCLEUS: {
            "do_sample": True, "top_p": 0.9, "temperature": 1.0, "num_beams": 1, "max_new_tokens": 30,
            "num_return_sequences": 5, **fixed,
        },
        BEAM_SAMPLE: {
            "do_sample": True, "top_p": 0.9, "temperature": 1.0, "num_beams": 15, "max_new_tokens": 30,
            "min_new_tokens": 1, "num_return_sequences": 5, **fixed,
        },
    }  # fmt: skip
    for variant, kwargs in expected.items():
        before = captioner.spy.count
        response = captioner.stub.GenerateCaptions(_request([_image(3)], 5, variant=variant, seed=3))
        assert captioner.spy.count == before + 1
        call = captioner.spy.calls[before]
        assert call.kwargs == kwargs
        # A caption may be 30 tokens long: the length counts generated tokens, not the prompt's
        # (the random model seldom stops early; with this seed it never does).
        assert call.new_tokens == 30
        assert len(response.results[0].captions) == 5


def test_overrides_reach_generate(captioner):
    before = captioner.spy.count
    captioner.stub.GenerateCaptions(
        _request([_image(4)], 2, variant=NUCLEUS, top_p=0.5, temperature=0.7, max_new_tokens=9, min_length=2)
    )
    captioner.stub.GenerateCaptions(
        _request([_image(4)], 6, variant=BEAM_SAMPLE, num_beams=6, max_length=10, min_length=3, top_p=0.8)
    )
    nucleus, beam = (call.kwargs for call in captioner.spy.calls[before:])
    assert (nucleus["top_p"], nucleus["temperature"], nucleus["max_new_tokens"]) == (0.5, 0.7, 9)
    assert (nucleus["min_new_tokens"], nucleus["num_return_sequences"], nucleus["num_beams"]) == (2, 2, 1)
    assert (beam["num_beams"], beam["max_new_tokens"], beam["min_new_tokens"], beam["top_p"]) == (
        6,
        10,
        3,
        0.8,
    )
    assert beam["num_return_sequences"] == 6
    assert all(call.new_tokens <= 10 for call in captioner.spy.calls[before:])


def test_a_seed_reproduces_captions_and_another_seed_does_not(captioner):
    for variant in (NUCLEUS, BEAM_SAMPLE):
        first = _captions(captioner.stub.GenerateCaptions(_request([_image(5)], 5, variant=variant, seed=11)))
        again = _captions(captioner.stub.GenerateCaptions(_request([_image(5)], 5, variant=variant, seed=11)))
        other = _captions(captioner.stub.GenerateCaptions(_request([_image(5)], 5, variant=variant, seed=12)))
        assert first == again
        assert first != other
        # Reproducible per image, whatever else shares the request (and so the batch).
        mixed = _captions(
            captioner.stub.GenerateCaptions(_request([_image(0), _image(5)], 5, variant=variant, seed=11))
        )
        assert mixed[1] == first[0]


def test_unseeded_sampling_varies(captioner):
    request = _request([_image(6)], 5, variant=NUCLEUS)
    samples = {tuple(_captions(captioner.stub.GenerateCaptions(request))[0]) for _ in range(3)}
    assert len(samples) > 1


def _single_references(captioner, images, **decoding) -> list[list[str]]:
    references = [
        _captions(captioner.stub.GenerateCaptions(_request([image], 3, **decoding)))[0] for image in images
    ]
    # Otherwise a mix-up between images could not show.
    assert len({tuple(r) for r in references}) == len(references)
    return references


def test_mixed_image_sizes_share_one_generate_call(captioner):
    images = [_image(i, SIZES[i], "JPEG" if i % 2 else "PNG") for i in range(len(COLOURS))]
    references = _single_references(captioner, images, **NEAR_GREEDY)
    before = captioner.spy.count
    batched = _captions(captioner.stub.GenerateCaptions(_request(images, 3, **NEAR_GREEDY)))
    assert [call.batch_size for call in captioner.spy.calls[before:]] == [len(images)]
    assert batched == references


@pytest.mark.parametrize("decoding", [NEAR_GREEDY, {"variant": NUCLEUS, "seed": 5, "max_new_tokens": 12}])
def test_concurrent_callers_each_get_their_own_captions(captioner, decoding):
    images = [_image(i) for i in range(len(COLOURS))]
    references = _single_references(captioner, images, **decoding)
    batches_before = captioner.servicer.core.stats().batching.batches

    def call(index: int) -> list[str]:
        return _captions(captioner.stub.GenerateCaptions(_request([images[index]], 3, **decoding)))[0]

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        results = list(pool.map(call, range(len(images))))
    assert results == references
    assert captioner.servicer.core.stats().batching.batches - batches_before < len(images)


def test_a_cache_hit_returns_the_same_captions_without_running_the_model(captioner):
    request = _request([_image(0, (41, 31)), _image(1, (41, 31))], 4, bypass_cache=False, variant=NUCLEUS)
    before = captioner.spy.count
    first = captioner.stub.GenerateCaptions(request)
    assert captioner.spy.count == before + 1
    second = captioner.stub.GenerateCaptions(request)
    assert captioner.spy.count == before + 1
    assert [r.cache_hit for r in first.results] == [False, False]
    assert [r.cache_hit for r in second.results] == [True, True]
    assert _captions(first) == _captions(second)  # unseeded: the cache pins the first sample

    # Whatever changes the captions misses: N, a parameter, a seed. bypass_cache neither reads nor writes.
    for changed in (
        _request(request.images, 3, bypass_cache=False, variant=NUCLEUS),
        _request(request.images, 4, bypass_cache=False, variant=NUCLEUS, top_p=0.8),
        _request(request.images, 4, bypass_cache=False, variant=NUCLEUS, seed=1),
        _request(request.images, 4, bypass_cache=True, variant=NUCLEUS),
    ):
        response = captioner.stub.GenerateCaptions(changed)
        assert [r.cache_hit for r in response.results] == [False, False]
    assert captioner.spy.count == before + 6  # a seeded request runs its two images one by one

    # One cached image and one new one: only the new one runs.
    mixed = captioner.stub.GenerateCaptions(
        _request([request.images[0], _image(2, (41, 31))], 4, bypass_cache=False, variant=NUCLEUS)
    )
    assert [r.cache_hit for r in mixed.results] == [True, False]
    assert captioner.spy.calls[-1].batch_size == 1
    assert _captions(mixed)[0] == _captions(first)[0]


def test_replicas_share_captions_through_redis(tiny_pack, redis_server):
    settings = captioner_settings(tiny_pack, port=0, **TEST_LIMITS)
    # A prompt no other test uses keeps the shared Redis free of other tests' entries.
    request = _request([_image(3)], 3, bypass_cache=False, variant=NUCLEUS, prompt="redis replica test")
    replicas = [start_captioner(settings, RedisCache(redis_server.url)) for _ in range(2)]
    try:
        first = replicas[0].stub.GenerateCaptions(request)
        second = replicas[1].stub.GenerateCaptions(request)
        assert (first.results[0].cache_hit, second.results[0].cache_hit) == (False, True)
        assert _captions(first) == _captions(second)
        assert (replicas[0].spy.count, replicas[1].spy.count) == (1, 0)
    finally:
        for replica in replicas:
            replica.server.stop()


def _status(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call(request)
    return error.value.code(), error.value.details()


INVALID = grpc.StatusCode.INVALID_ARGUMENT
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("request_", "code", "says"),
    [
        (_request([]), INVALID, "images is empty"),
        (_request([_image(0), common_pb2.Image(data=b"not an image")]), INVALID, "images[1]"),
        (_request([common_pb2.Image()]), INVALID, "neither data nor uri"),
        (_request([_image(0)] * 9), EXHAUSTED, "CIR_CAPTIONER_MAX_IMAGES_PER_REQUEST"),
        (_request([_image(0)], 21, variant=NUCLEUS), EXHAUSTED, "CIR_CAPTIONER_MAX_NUM_CAPTIONS"),
        (_request([_image(0)], top_p=1.5), INVALID, "decoding.top_p must be in (0, 1]"),
        (_request([_image(0)], top_p=0.0), INVALID, "decoding.top_p must be in (0, 1]"),
        (_request([_image(0)], temperature=0.0), INVALID, "decoding.temperature must be in (0, 10]"),
        (_request([_image(0)], variant=7), INVALID, "unknown decoding.variant 7"),
        (_request([_image(0)], 16), INVALID, "set decoding.num_beams to at least 16"),
        (_request([_image(0)], 4, num_beams=0), INVALID, "decoding.num_beams must be at least 1"),
        (_request([_image(0)], 4, num_beams=17), EXHAUSTED, "CIR_CAPTIONER_MAX_NUM_BEAMS"),
        (_request([_image(0)], max_new_tokens=20), INVALID, "decoding.max_new_tokens does not apply"),
        (
            _request([_image(0)], variant=NUCLEUS, max_length=20),
            INVALID,
            "decoding.max_length does not apply",
        ),
        (_request([_image(0)], max_length=61), EXHAUSTED, "CIR_CAPTIONER_MAX_NEW_TOKENS"),
        (_request([_image(0)], variant=NUCLEUS, max_new_tokens=0), INVALID, "at least 1"),
        (_request([_image(0)], max_length=5, min_length=6), INVALID, "decoding.min_length 6"),
        (_request([_image(0)], prompt="x" * 257), INVALID, "CIR_CAPTIONER_MAX_PROMPT_CHARS"),
        # Fits the character limit, not the tiny language model's 128 positions.
        (_request([_image(0)], 1, prompt="q7" * 100), INVALID, "more than the language model's 128"),
    ],
)
def test_bad_requests_get_the_right_status_and_run_nothing(captioner, request_, code, says):
    before = captioner.spy.count
    got, message = _status(captioner.stub.GenerateCaptions, request_)
    assert (got, says in message) == (code, True), message
    assert captioner.spy.count == before
