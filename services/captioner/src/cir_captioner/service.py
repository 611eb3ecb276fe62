"""CaptionerService: request validation, caching and batching around the CaptionEngine."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import numpy as np
from PIL import Image

from cir.captioner.v1 import captioner_pb2, captioner_pb2_grpc
from cir.common.v1 import common_pb2
from cir_captioner.blip2_loading import load_blip2
from cir_captioner.decoding import (
    DecodingOverrides,
    DecodingParams,
    Variant,
    defaults_from_settings,
    limits_from_settings,
    resolve_decoding,
)
from cir_captioner.engine import CaptionEngine
from cir_captioner.settings import ENV_PREFIX, CaptionerSettings
from cir_common.batching import MicroBatcher
from cir_common.cache import Cache, cache_from_settings, cache_key, pack_json, unpack_json
from cir_common.errors import ConfigError, InvalidArgument, Unavailable
from cir_common.memo import get_or_compute
from cir_common.service_kit import (
    StageTimer,
    decode_budget,
    decoded_request_images,
    pending_items_limit,
    require_items,
)

log = logging.getLogger(__name__)

CACHE_KIND = "blip2_captions"

_VARIANT_FROM_PROTO = {
    captioner_pb2.DECODING_VARIANT_NUCLEUS: Variant.NUCLEUS,
    captioner_pb2.DECODING_VARIANT_BEAM_SAMPLE: Variant.BEAM_SAMPLE,
}
_VARIANT_TO_PROTO = {variant: value for value, variant in _VARIANT_FROM_PROTO.items()}
# The proto's optional fields, named as in DecodingOverrides.
_OPTIONAL = tuple(f.name for f in dataclasses.fields(DecodingOverrides) if f.name != "variant")


def build_engine(settings: CaptionerSettings) -> CaptionEngine:
    return CaptionEngine(load_blip2(settings.model, settings.device, settings.dtype))


def _proto_float(value: float) -> float:
    # Proto floats are float32: a client's 0.9 arrives as 0.89999997615814. Taking the shortest decimal that
    # float32 rounds back to recovers 0.9, so explicit defaults share batches and cache entries with implicit.
    return float(str(np.float32(value)))


def overrides_from_proto(message: captioner_pb2.DecodingParameters) -> DecodingOverrides:
    variant = None
    if message.variant != captioner_pb2.DECODING_VARIANT_UNSPECIFIED:
        variant = _VARIANT_FROM_PROTO.get(message.variant)
        if variant is None:
            raise InvalidArgument(
                f"unknown decoding.variant {message.variant}; use DECODING_VARIANT_NUCLEUS, "
                "DECODING_VARIANT_BEAM_SAMPLE, or leave it unset for the server default"
            )
    given: dict[str, Any] = {name: getattr(message, name) for name in _OPTIONAL if message.HasField(name)}
    for name in ("top_p", "temperature"):
        if name in given:
            given[name] = _proto_float(given[name])
    return DecodingOverrides(variant=variant, **given)


def params_to_proto(params: DecodingParams) -> captioner_pb2.DecodingParameters:
    """Every parameter as it runs; the length field the variant does not use stays unset."""
    message = captioner_pb2.DecodingParameters(
        variant=_VARIANT_TO_PROTO[params.variant],
        top_p=params.top_p,
        temperature=params.temperature,
        num_beams=params.num_beams,
        prompt=params.prompt,
    )
    for field in ("max_new_tokens", "max_length", "min_length", "seed"):
        value = getattr(params, field)
        if value is not None:
            setattr(message, field, value)
    return message


class CaptionerServicer(captioner_pb2_grpc.CaptionerServiceServicer):
    def __init__(self, settings: CaptionerSettings, cache: Cache | None = None) -> None:
        # Checked before the model loads: a bad default should stop the process, not the first request.
        self.defaults = defaults_from_settings(settings)
        self.limits = limits_from_settings(settings)
        self.default_params = resolve_decoding(DecodingOverrides(), 0, self.defaults, self.limits)
        self.settings = settings
        self.cache = cache or cache_from_settings(settings)
        self.decode_budget = decode_budget(settings, ENV_PREFIX)
        self._engine: CaptionEngine | None = None
        self._batcher: MicroBatcher[DecodingParams, Image.Image, list[str]] | None = None

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        await self.cache.close()

    async def load(self) -> None:
        engine = await asyncio.to_thread(build_engine, self.settings)
        try:
            engine.check_fits_context(self.default_params)
        except InvalidArgument as error:
            raise ConfigError(
                f"the default decoding does not fit {self.settings.model}: {error.message}"
            ) from None
        self._batcher = MicroBatcher(
            engine.caption,
            max_batch_size=self.settings.batch_max_images,
            window_s=self.settings.batch_window_ms / 1000.0,
            name="captions",
            max_pending_items=pending_items_limit(
                self.settings, self.settings.batch_max_images, self.settings.max_images_per_request
            ),
            limit_setting=f"{ENV_PREFIX}MAX_PENDING_BATCH_ITEMS",
        )
        self._engine = engine
        log.info(
            "loaded %s on %s/%s (image size %s); default %s, N=%d, prompt %r",
            engine.identity,
            engine.blip2.device,
            engine.dtype_name,
            engine.blip2.image_size,
            self.defaults.variant.value,
            self.defaults.num_captions,
            self.defaults.prompt,
        )

    @property
    def engine(self) -> CaptionEngine:
        if self._engine is None:
            raise Unavailable("the captioner model is not loaded yet")
        return self._engine

    def _model_identity(self) -> common_pb2.ModelIdentity:
        engine = self.engine
        height, width = engine.blip2.image_size
        return common_pb2.ModelIdentity(
            name=engine.name,
            revision=engine.revision,
            family="blip2",
            details={
                "device": engine.blip2.device,
                "dtype": engine.dtype_name,
                "image_size": f"{height}x{width}",
            },
        )

    def _cache_params(self, params: DecodingParams) -> dict[str, object]:
        # The weights hash does not cover the processor config or the numeric precision; both change captions.
        engine = self.engine
        return {
            **params.cache_params(),
            "image_size": list(engine.blip2.image_size),
            "dtype": engine.dtype_name,
        }

    async def GenerateCaptions(
        self, request: captioner_pb2.GenerateCaptionsRequest, context: object
    ) -> captioner_pb2.GenerateCaptionsResponse:
        require_items(
            request.images,
            "images",
            self.settings.max_images_per_request,
            f"{ENV_PREFIX}MAX_IMAGES_PER_REQUEST",
        )
        params = resolve_decoding(
            overrides_from_proto(request.decoding), request.num_captions, self.defaults, self.limits
        )
        engine = self.engine
        timer = StageTimer()
        # The decoded pixels count against the process's budget until the model has run on them.
        async with decoded_request_images(
            request.images, self.settings, self.decode_budget, timer=timer
        ) as decoded:
            cache_params = self._cache_params(params)
            keys = [cache_key(CACHE_KIND, engine.identity, cache_params, d.content_sha256) for d in decoded]
            assert self._batcher is not None
            batcher = self._batcher

            async def compute(indices: list[int]) -> list[bytes]:
                with timer.stage("generate"):
                    captions = await batcher.submit(params, [decoded[i].image for i in indices])
                return [pack_json(c) for c in captions]

            # Unseeded requests are cached too: the first sample is pinned, so a gallery's captions stay put.
            memo = await get_or_compute(self.cache, keys, compute, bypass=request.bypass_cache)
        return captioner_pb2.GenerateCaptionsResponse(
            results=[
                captioner_pb2.ImageCaptions(captions=unpack_json(value), cache_hit=hit)
                for value, hit in zip(memo.values, memo.hits, strict=True)
            ],
            decoding=params_to_proto(params),
            num_captions=params.num_captions,
            model=self._model_identity(),
            timings=timer.as_protos(),
        )

    async def GetModelInfo(
        self, request: captioner_pb2.GetModelInfoRequest, context: object
    ) -> captioner_pb2.GetModelInfoResponse:
        engine = self.engine
        return captioner_pb2.GetModelInfoResponse(
            model=self._model_identity(),
            default_decoding=params_to_proto(self.default_params),
            default_num_captions=self.defaults.num_captions,
            image_size=engine.blip2.image_size[0],
            max_images_per_request=self.settings.max_images_per_request,
            max_num_captions=self.limits.max_num_captions,
            max_new_tokens=self.limits.max_new_tokens,
            device=engine.blip2.device,
            dtype=engine.dtype_name,
        )
