"""Decoding variants, request overrides and start-up checks of the captioner, without a server."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
from captioner_support import captioner_settings

from cir.captioner.v1 import captioner_pb2
from cir_captioner.decoding import (
    VARIANT_DEFAULTS,
    DecodingLimits,
    DecodingOverrides,
    ServerDecodingDefaults,
    generate_kwargs,
    resolve_decoding,
)
from cir_captioner.service import CaptionerServicer, overrides_from_proto, params_to_proto
from cir_captioner.settings import CaptionerSettings
from cir_common.cache import MemoryCache
from cir_common.errors import ConfigError, InvalidArgument
from cir_common.vocabulary import DecodingVariant

LIMITS = DecodingLimits(max_num_captions=64, max_new_tokens=100, max_num_beams=64, max_prompt_chars=256)
DEFAULTS = ServerDecodingDefaults(variant=DecodingVariant.BEAM_SAMPLE, num_captions=15, prompt="a photo of")


def test_variants_carry_the_published_settings():
    # method.md 2.3: LDRE's nucleus stack and CVSI's released beam_sample stack.
    assert dataclasses.asdict(VARIANT_DEFAULTS[DecodingVariant.NUCLEUS]) == {
        "do_sample": True, "top_p": 0.9, "temperature": 1.0, "num_beams": 1,
        "length_field": "max_new_tokens", "caption_tokens": 30, "min_length": None,
    }  # fmt: skip
    assert dataclasses.asdict(VARIANT_DEFAULTS[DecodingVariant.BEAM_SAMPLE]) == {
        "do_sample": True, "top_p": 0.9, "temperature": 1.0, "num_beams": 15,
        "length_field": "max_length", "caption_tokens": 30, "min_length": 1,
    }  # fmt: skip


def test_server_defaults_resolve_to_fifteen_beam_sampled_captions():
    params = resolve_decoding(DecodingOverrides(), 0, DEFAULTS, LIMITS)
    assert (params.variant, params.num_captions, params.prompt, params.seed) == (
        DecodingVariant.BEAM_SAMPLE, 15, "a photo of", None,
    )  # fmt: skip
    assert (params.max_length, params.max_new_tokens, params.min_length) == (30, None, 1)
    assert generate_kwargs(params) == {
        "do_sample": True, "top_p": 0.9, "temperature": 1.0, "num_beams": 15, "num_return_sequences": 15,
        "max_new_tokens": 30, "min_new_tokens": 1, "top_k": 50, "repetition_penalty": 1.0,
        "length_penalty": 1.0,
    }  # fmt: skip


def test_explicit_defaults_sent_as_float32_equal_the_implicit_ones():
    implicit = resolve_decoding(DecodingOverrides(variant=DecodingVariant.NUCLEUS), 5, DEFAULTS, LIMITS)
    message = captioner_pb2.DecodingParameters(
        variant=captioner_pb2.DECODING_VARIANT_NUCLEUS, top_p=0.9, temperature=1.0, max_new_tokens=30
    )
    assert message.top_p != 0.9  # float32 on the wire
    explicit = resolve_decoding(overrides_from_proto(message), 5, DEFAULTS, LIMITS)
    # Equal params: one batching key and one cache entry for both requests.
    assert explicit == implicit and hash(explicit) == hash(implicit)


def test_the_echoed_parameters_reproduce_the_request():
    overrides = DecodingOverrides(
        variant=DecodingVariant.BEAM_SAMPLE, top_p=0.75, temperature=0.5, num_beams=8, max_length=12,
        min_length=2, prompt="", seed=2**64 - 1,
    )  # fmt: skip
    params = resolve_decoding(overrides, 8, DEFAULTS, LIMITS)
    echoed = params_to_proto(params)
    assert not echoed.HasField("max_new_tokens") and echoed.HasField("prompt") and echoed.prompt == ""
    assert resolve_decoding(overrides_from_proto(echoed), 8, DEFAULTS, LIMITS) == params


def test_not_a_number_is_out_of_range():
    for field in ("top_p", "temperature"):
        with pytest.raises(InvalidArgument, match=f"decoding.{field} must be in"):
            resolve_decoding(DecodingOverrides(**{field: math.nan}), 1, DEFAULTS, LIMITS)


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"default_variant": "greedy"}, "CIR_CAPTIONER_DEFAULT_VARIANT='greedy'"),
        ({"default_num_captions": 16}, "num_beams to at least 16"),
        ({"default_num_captions": 0}, "DEFAULT_NUM_CAPTIONS must be at least 1"),
        ({"default_variant": "nucleus", "default_num_captions": 65}, "CIR_CAPTIONER_MAX_NUM_CAPTIONS"),
        ({"max_new_tokens": 20}, "CIR_CAPTIONER_MAX_NEW_TOKENS"),
        ({"default_prompt": "x" * 300}, "CIR_CAPTIONER_MAX_PROMPT_CHARS"),
    ],
)
def test_a_default_outside_the_limits_stops_the_server_before_loading(overrides, says):
    with pytest.raises(ConfigError, match=r"(?i)default") as error:
        CaptionerServicer(CaptionerSettings(**overrides), cache=MemoryCache(1024))
    assert says in error.value.message


def test_a_default_prompt_too_long_for_the_model_fails_the_load(tiny_pack):
    settings = captioner_settings(tiny_pack, default_prompt="q7" * 100)
    servicer = CaptionerServicer(settings, cache=MemoryCache(1024))
    with pytest.raises(ConfigError, match="more than the language model's 128"):
        asyncio.run(servicer.load())
