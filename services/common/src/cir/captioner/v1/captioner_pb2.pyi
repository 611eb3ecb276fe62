from cir.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DecodingVariant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECODING_VARIANT_UNSPECIFIED: _ClassVar[DecodingVariant]
    DECODING_VARIANT_NUCLEUS: _ClassVar[DecodingVariant]
    DECODING_VARIANT_BEAM_SAMPLE: _ClassVar[DecodingVariant]
DECODING_VARIANT_UNSPECIFIED: DecodingVariant
DECODING_VARIANT_NUCLEUS: DecodingVariant
DECODING_VARIANT_BEAM_SAMPLE: DecodingVariant

class DecodingParameters(_message.Message):
    __slots__ = ("variant", "top_p", "temperature", "num_beams", "max_new_tokens", "max_length", "min_length", "prompt", "seed")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MIN_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    variant: DecodingVariant
    top_p: float
    temperature: float
    num_beams: int
    max_new_tokens: int
    max_length: int
    min_length: int
    prompt: str
    seed: int
    def __init__(self, variant: _Optional[_Union[DecodingVariant, str]] = ..., top_p: _Optional[float] = ..., temperature: _Optional[float] = ..., num_beams: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., max_length: _Optional[int] = ..., min_length: _Optional[int] = ..., prompt: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class GenerateCaptionsRequest(_message.Message):
    __slots__ = ("images", "num_captions", "decoding", "bypass_cache")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NUM_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    DECODING_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    num_captions: int
    decoding: DecodingParameters
    bypass_cache: bool
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., num_captions: _Optional[int] = ..., decoding: _Optional[_Union[DecodingParameters, _Mapping]] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class ImageCaptions(_message.Message):
    __slots__ = ("captions", "cache_hit")
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedScalarFieldContainer[str]
    cache_hit: bool
    def __init__(self, captions: _Optional[_Iterable[str]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class GenerateCaptionsResponse(_message.Message):
    __slots__ = ("results", "decoding", "num_captions", "model", "timings")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    DECODING_FIELD_NUMBER: _ClassVar[int]
    NUM_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ImageCaptions]
    decoding: DecodingParameters
    num_captions: int
    model: _common_pb2.ModelIdentity
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, results: _Optional[_Iterable[_Union[ImageCaptions, _Mapping]]] = ..., decoding: _Optional[_Union[DecodingParameters, _Mapping]] = ..., num_captions: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "default_decoding", "default_num_captions", "image_size", "max_images_per_request", "max_num_captions", "max_new_tokens", "device", "dtype")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DECODING_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_NUM_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_IMAGES_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelIdentity
    default_decoding: DecodingParameters
    default_num_captions: int
    image_size: int
    max_images_per_request: int
    max_num_captions: int
    max_new_tokens: int
    device: str
    dtype: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., default_decoding: _Optional[_Union[DecodingParameters, _Mapping]] = ..., default_num_captions: _Optional[int] = ..., image_size: _Optional[int] = ..., max_images_per_request: _Optional[int] = ..., max_num_captions: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ...) -> None: ...
