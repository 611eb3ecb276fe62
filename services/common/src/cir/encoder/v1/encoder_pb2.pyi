from cir.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Preprocessing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREPROCESSING_UNSPECIFIED: _ClassVar[Preprocessing]
    PREPROCESSING_TARGETPAD: _ClassVar[Preprocessing]
    PREPROCESSING_MODEL_DEFAULT: _ClassVar[Preprocessing]
PREPROCESSING_UNSPECIFIED: Preprocessing
PREPROCESSING_TARGETPAD: Preprocessing
PREPROCESSING_MODEL_DEFAULT: Preprocessing

class EmbedImagesRequest(_message.Message):
    __slots__ = ("images", "preprocessing", "normalize", "vector_format", "bypass_cache")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FORMAT_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    preprocessing: Preprocessing
    normalize: bool
    vector_format: _common_pb2.VectorFormat
    bypass_cache: bool
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., preprocessing: _Optional[_Union[Preprocessing, str]] = ..., normalize: _Optional[bool] = ..., vector_format: _Optional[_Union[_common_pb2.VectorFormat, str]] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class EmbedImagesResponse(_message.Message):
    __slots__ = ("embeddings", "model", "preprocessing", "normalized", "cache_hits", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    model: _common_pb2.ModelIdentity
    preprocessing: Preprocessing
    normalized: bool
    cache_hits: _containers.RepeatedScalarFieldContainer[bool]
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., preprocessing: _Optional[_Union[Preprocessing, str]] = ..., normalized: _Optional[bool] = ..., cache_hits: _Optional[_Iterable[bool]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class EmbedTextsRequest(_message.Message):
    __slots__ = ("texts", "normalize", "vector_format", "bypass_cache")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FORMAT_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    normalize: bool
    vector_format: _common_pb2.VectorFormat
    bypass_cache: bool
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., normalize: _Optional[bool] = ..., vector_format: _Optional[_Union[_common_pb2.VectorFormat, str]] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class TextEmbedding(_message.Message):
    __slots__ = ("embedding", "truncated", "token_count", "cache_hit")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_COUNT_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    embedding: _common_pb2.Vector
    truncated: bool
    token_count: int
    cache_hit: bool
    def __init__(self, embedding: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., truncated: _Optional[bool] = ..., token_count: _Optional[int] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class EmbedTextsResponse(_message.Message):
    __slots__ = ("embeddings", "model", "normalized", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[TextEmbedding]
    model: _common_pb2.ModelIdentity
    normalized: bool
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[TextEmbedding, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., normalized: _Optional[bool] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class ComposedPrompt(_message.Message):
    __slots__ = ("text", "reference_image", "reference_embedding")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    text: str
    reference_image: _common_pb2.Image
    reference_embedding: _common_pb2.Vector
    def __init__(self, text: _Optional[str] = ..., reference_image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., reference_embedding: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ...) -> None: ...

class EmbedComposedPromptsRequest(_message.Message):
    __slots__ = ("prompts", "mapping_network", "preprocessing", "normalize", "vector_format", "return_pseudo_tokens")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    MAPPING_NETWORK_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FORMAT_FIELD_NUMBER: _ClassVar[int]
    RETURN_PSEUDO_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[ComposedPrompt]
    mapping_network: str
    preprocessing: Preprocessing
    normalize: bool
    vector_format: _common_pb2.VectorFormat
    return_pseudo_tokens: bool
    def __init__(self, prompts: _Optional[_Iterable[_Union[ComposedPrompt, _Mapping]]] = ..., mapping_network: _Optional[str] = ..., preprocessing: _Optional[_Union[Preprocessing, str]] = ..., normalize: _Optional[bool] = ..., vector_format: _Optional[_Union[_common_pb2.VectorFormat, str]] = ..., return_pseudo_tokens: _Optional[bool] = ...) -> None: ...

class EmbedComposedPromptsResponse(_message.Message):
    __slots__ = ("embeddings", "pseudo_tokens", "model", "mapping_network", "normalized", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAPPING_NETWORK_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[TextEmbedding]
    pseudo_tokens: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    model: _common_pb2.ModelIdentity
    mapping_network: _common_pb2.ModelIdentity
    normalized: bool
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[TextEmbedding, _Mapping]]] = ..., pseudo_tokens: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., mapping_network: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., normalized: _Optional[bool] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class InstructCirQuery(_message.Message):
    __slots__ = ("reference_image", "text")
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    reference_image: _common_pb2.Image
    text: str
    def __init__(self, reference_image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., text: _Optional[str] = ...) -> None: ...

class EmbedInstructCirQueriesRequest(_message.Message):
    __slots__ = ("queries", "fused", "preprocessing", "normalize", "vector_format")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    FUSED_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FORMAT_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[InstructCirQuery]
    fused: bool
    preprocessing: Preprocessing
    normalize: bool
    vector_format: _common_pb2.VectorFormat
    def __init__(self, queries: _Optional[_Iterable[_Union[InstructCirQuery, _Mapping]]] = ..., fused: _Optional[bool] = ..., preprocessing: _Optional[_Union[Preprocessing, str]] = ..., normalize: _Optional[bool] = ..., vector_format: _Optional[_Union[_common_pb2.VectorFormat, str]] = ...) -> None: ...

class EmbedInstructCirQueriesResponse(_message.Message):
    __slots__ = ("embeddings", "model", "normalized", "fused", "truncated", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    FUSED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    model: _common_pb2.ModelIdentity
    normalized: bool
    fused: bool
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., normalized: _Optional[bool] = ..., fused: _Optional[bool] = ..., truncated: _Optional[_Iterable[bool]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class EmbedInstructCirTargetsRequest(_message.Message):
    __slots__ = ("images", "preprocessing", "normalize", "vector_format", "bypass_cache")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FORMAT_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[_common_pb2.Image]
    preprocessing: Preprocessing
    normalize: bool
    vector_format: _common_pb2.VectorFormat
    bypass_cache: bool
    def __init__(self, images: _Optional[_Iterable[_Union[_common_pb2.Image, _Mapping]]] = ..., preprocessing: _Optional[_Union[Preprocessing, str]] = ..., normalize: _Optional[bool] = ..., vector_format: _Optional[_Union[_common_pb2.VectorFormat, str]] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class EmbedInstructCirTargetsResponse(_message.Message):
    __slots__ = ("embeddings", "model", "normalized", "cache_hits", "timings")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    embeddings: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    model: _common_pb2.ModelIdentity
    normalized: bool
    cache_hits: _containers.RepeatedScalarFieldContainer[bool]
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, embeddings: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., normalized: _Optional[bool] = ..., cache_hits: _Optional[_Iterable[bool]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class InstructCirInfo(_message.Message):
    __slots__ = ("model", "embedding_dim", "has_fusion", "fusion_weight")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    HAS_FUSION_FIELD_NUMBER: _ClassVar[int]
    FUSION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelIdentity
    embedding_dim: int
    has_fusion: bool
    fusion_weight: float
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., embedding_dim: _Optional[int] = ..., has_fusion: _Optional[bool] = ..., fusion_weight: _Optional[float] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MappingNetworkInfo(_message.Message):
    __slots__ = ("name", "model", "input_dim", "output_dim", "is_default")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: _common_pb2.ModelIdentity
    input_dim: int
    output_dim: int
    is_default: bool
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., input_dim: _Optional[int] = ..., output_dim: _Optional[int] = ..., is_default: _Optional[bool] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "embedding_dim", "text_width", "context_length", "placeholder_token_id", "default_preprocessing", "target_pad_ratio", "image_size", "mapping_networks", "device", "dtype", "max_batch_items", "normalized_by_default", "instructcir")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    TEXT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PLACEHOLDER_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    TARGET_PAD_RATIO_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAPPING_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ITEMS_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_BY_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTCIR_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelIdentity
    embedding_dim: int
    text_width: int
    context_length: int
    placeholder_token_id: int
    default_preprocessing: Preprocessing
    target_pad_ratio: float
    image_size: int
    mapping_networks: _containers.RepeatedCompositeFieldContainer[MappingNetworkInfo]
    device: str
    dtype: str
    max_batch_items: int
    normalized_by_default: bool
    instructcir: InstructCirInfo
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., embedding_dim: _Optional[int] = ..., text_width: _Optional[int] = ..., context_length: _Optional[int] = ..., placeholder_token_id: _Optional[int] = ..., default_preprocessing: _Optional[_Union[Preprocessing, str]] = ..., target_pad_ratio: _Optional[float] = ..., image_size: _Optional[int] = ..., mapping_networks: _Optional[_Iterable[_Union[MappingNetworkInfo, _Mapping]]] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., max_batch_items: _Optional[int] = ..., normalized_by_default: _Optional[bool] = ..., instructcir: _Optional[_Union[InstructCirInfo, _Mapping]] = ...) -> None: ...
