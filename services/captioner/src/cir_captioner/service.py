"""CaptionerService: converts each request for the core (`Captioner`) and its answer back; nothing else.

Errors raised by the core are `cir_common.errors` types; the server's interceptor maps them to status codes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from cir.captioner.v1 import captioner_pb2, captioner_pb2_grpc
from cir.common.v1 import common_pb2
from cir_captioner.core import Captioner, ModelInfo
from cir_captioner.decoding import DecodingOverrides, DecodingParams
from cir_captioner.settings import CaptionerSettings
from cir_common.cache import Cache
from cir_common.errors import InvalidArgument
from cir_common.proto_enums import DECODING_TO_PROTO
from cir_common.service_kit import image_reader

_VARIANT_FROM_PROTO = {value: variant for variant, value in DECODING_TO_PROTO.items()}
# The proto's optional fields, named as in DecodingOverrides.
_OPTIONAL = tuple(f.name for f in dataclasses.fields(DecodingOverrides) if f.name != "variant")


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
        variant=DECODING_TO_PROTO[params.variant],
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


def model_identity_to_proto(model: ModelInfo) -> common_pb2.ModelIdentity:
    height, width = model.image_size
    return common_pb2.ModelIdentity(
        name=model.name,
        revision=model.revision,
        family=model.family,
        details={"device": model.device, "dtype": model.dtype, "image_size": f"{height}x{width}"},
    )


class CaptionerServicer(captioner_pb2_grpc.CaptionerServiceServicer):
    def __init__(self, settings: CaptionerSettings, cache: Cache | None = None) -> None:
        self.core = Captioner(settings, cache)

    async def load(self) -> None:
        await self.core.load()

    async def close(self) -> None:
        await self.core.close()

    async def GenerateCaptions(
        self, request: captioner_pb2.GenerateCaptionsRequest, context: object
    ) -> captioner_pb2.GenerateCaptionsResponse:
        result = await self.core.generate_captions(
            [image_reader(image, self.core.settings) for image in request.images],
            request.num_captions,
            overrides_from_proto(request.decoding),
            bypass_cache=request.bypass_cache,
        )
        return captioner_pb2.GenerateCaptionsResponse(
            results=[
                captioner_pb2.ImageCaptions(captions=image.captions, cache_hit=image.cache_hit)
                for image in result.results
            ],
            decoding=params_to_proto(result.decoding),
            num_captions=result.decoding.num_captions,
            model=model_identity_to_proto(result.model),
            timings=result.timings.as_protos(),
        )

    async def GetModelInfo(
        self, request: captioner_pb2.GetModelInfoRequest, context: object
    ) -> captioner_pb2.GetModelInfoResponse:
        info = self.core.info()
        return captioner_pb2.GetModelInfoResponse(
            model=model_identity_to_proto(info.model),
            default_decoding=params_to_proto(info.default_decoding),
            default_num_captions=info.default_decoding.num_captions,
            image_size=info.model.image_size[0],
            max_images_per_request=info.max_images_per_request,
            max_num_captions=info.max_num_captions,
            max_new_tokens=info.max_new_tokens,
            device=info.model.device,
            dtype=info.model.dtype,
        )
