from cir.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Strategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STRATEGY_UNSPECIFIED: _ClassVar[Strategy]
    STRATEGY_IMAGE_ONLY: _ClassVar[Strategy]
    STRATEGY_TEXT_ONLY: _ClassVar[Strategy]
    STRATEGY_CAPTIONING: _ClassVar[Strategy]
    STRATEGY_PIC2WORD: _ClassVar[Strategy]
    STRATEGY_SEARLE: _ClassVar[Strategy]
    STRATEGY_LINCIR: _ClassVar[Strategy]
    STRATEGY_CIREVL: _ClassVar[Strategy]
    STRATEGY_LDRE: _ClassVar[Strategy]
    STRATEGY_WEIMOCIR: _ClassVar[Strategy]
    STRATEGY_CVSI: _ClassVar[Strategy]
    STRATEGY_INSTRUCTCIR: _ClassVar[Strategy]

class Preset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESET_UNSPECIFIED: _ClassVar[Preset]
    PRESET_CIRCO: _ClassVar[Preset]
    PRESET_CIRR: _ClassVar[Preset]
    PRESET_FASHIONIQ: _ClassVar[Preset]

class ScoreFunction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SCORE_FUNCTION_UNSPECIFIED: _ClassVar[ScoreFunction]
    SCORE_FUNCTION_DOT: _ClassVar[ScoreFunction]
    SCORE_FUNCTION_COSINE: _ClassVar[ScoreFunction]

class WeiMoCirVariant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEI_MO_CIR_VARIANT_UNSPECIFIED: _ClassVar[WeiMoCirVariant]
    WEI_MO_CIR_VARIANT_CODED: _ClassVar[WeiMoCirVariant]
    WEI_MO_CIR_VARIANT_PAPER: _ClassVar[WeiMoCirVariant]

class InstructCirVariant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTRUCT_CIR_VARIANT_UNSPECIFIED: _ClassVar[InstructCirVariant]
    INSTRUCT_CIR_VARIANT_PLAIN: _ClassVar[InstructCirVariant]
    INSTRUCT_CIR_VARIANT_FUSED: _ClassVar[InstructCirVariant]

class FieldType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FIELD_TYPE_UNSPECIFIED: _ClassVar[FieldType]
    FIELD_TYPE_STRING: _ClassVar[FieldType]
    FIELD_TYPE_INT: _ClassVar[FieldType]
    FIELD_TYPE_FLOAT: _ClassVar[FieldType]
    FIELD_TYPE_BOOL: _ClassVar[FieldType]

class ItemStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ITEM_STATUS_UNSPECIFIED: _ClassVar[ItemStatus]
    ITEM_STATUS_INDEXED: _ClassVar[ItemStatus]
    ITEM_STATUS_UNCHANGED: _ClassVar[ItemStatus]
    ITEM_STATUS_REPLACED: _ClassVar[ItemStatus]
    ITEM_STATUS_FAILED: _ClassVar[ItemStatus]
STRATEGY_UNSPECIFIED: Strategy
STRATEGY_IMAGE_ONLY: Strategy
STRATEGY_TEXT_ONLY: Strategy
STRATEGY_CAPTIONING: Strategy
STRATEGY_PIC2WORD: Strategy
STRATEGY_SEARLE: Strategy
STRATEGY_LINCIR: Strategy
STRATEGY_CIREVL: Strategy
STRATEGY_LDRE: Strategy
STRATEGY_WEIMOCIR: Strategy
STRATEGY_CVSI: Strategy
STRATEGY_INSTRUCTCIR: Strategy
PRESET_UNSPECIFIED: Preset
PRESET_CIRCO: Preset
PRESET_CIRR: Preset
PRESET_FASHIONIQ: Preset
SCORE_FUNCTION_UNSPECIFIED: ScoreFunction
SCORE_FUNCTION_DOT: ScoreFunction
SCORE_FUNCTION_COSINE: ScoreFunction
WEI_MO_CIR_VARIANT_UNSPECIFIED: WeiMoCirVariant
WEI_MO_CIR_VARIANT_CODED: WeiMoCirVariant
WEI_MO_CIR_VARIANT_PAPER: WeiMoCirVariant
INSTRUCT_CIR_VARIANT_UNSPECIFIED: InstructCirVariant
INSTRUCT_CIR_VARIANT_PLAIN: InstructCirVariant
INSTRUCT_CIR_VARIANT_FUSED: InstructCirVariant
FIELD_TYPE_UNSPECIFIED: FieldType
FIELD_TYPE_STRING: FieldType
FIELD_TYPE_INT: FieldType
FIELD_TYPE_FLOAT: FieldType
FIELD_TYPE_BOOL: FieldType
ITEM_STATUS_UNSPECIFIED: ItemStatus
ITEM_STATUS_INDEXED: ItemStatus
ITEM_STATUS_UNCHANGED: ItemStatus
ITEM_STATUS_REPLACED: ItemStatus
ITEM_STATUS_FAILED: ItemStatus

class Weights(_message.Message):
    __slots__ = ("alpha", "beta", "gamma", "weimocir_a", "weimocir_b")
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    WEIMOCIR_A_FIELD_NUMBER: _ClassVar[int]
    WEIMOCIR_B_FIELD_NUMBER: _ClassVar[int]
    alpha: float
    beta: float
    gamma: float
    weimocir_a: float
    weimocir_b: float
    def __init__(self, alpha: _Optional[float] = ..., beta: _Optional[float] = ..., gamma: _Optional[float] = ..., weimocir_a: _Optional[float] = ..., weimocir_b: _Optional[float] = ...) -> None: ...

class StrategyOptions(_message.Message):
    __slots__ = ("edit_mode", "objects_caption_selection", "score_function", "weimocir_variant", "edit_template", "instructcir_variant")
    EDIT_MODE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_CAPTION_SELECTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    WEIMOCIR_VARIANT_FIELD_NUMBER: _ClassVar[int]
    EDIT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTCIR_VARIANT_FIELD_NUMBER: _ClassVar[int]
    edit_mode: _common_pb2.EditMode
    objects_caption_selection: _common_pb2.CaptionSelection
    score_function: ScoreFunction
    weimocir_variant: WeiMoCirVariant
    edit_template: str
    instructcir_variant: InstructCirVariant
    def __init__(self, edit_mode: _Optional[_Union[_common_pb2.EditMode, str]] = ..., objects_caption_selection: _Optional[_Union[_common_pb2.CaptionSelection, str]] = ..., score_function: _Optional[_Union[ScoreFunction, str]] = ..., weimocir_variant: _Optional[_Union[WeiMoCirVariant, str]] = ..., edit_template: _Optional[str] = ..., instructcir_variant: _Optional[_Union[InstructCirVariant, str]] = ...) -> None: ...

class GalleryImage(_message.Message):
    __slots__ = ("id", "image", "uri", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: _common_pb2.Image
    uri: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CollectionSettings(_message.Message):
    __slots__ = ("num_captions", "decoding_variant", "preprocessing", "filterable_fields", "ann")
    NUM_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    DECODING_VARIANT_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    FILTERABLE_FIELDS_FIELD_NUMBER: _ClassVar[int]
    ANN_FIELD_NUMBER: _ClassVar[int]
    num_captions: int
    decoding_variant: str
    preprocessing: str
    filterable_fields: _containers.RepeatedCompositeFieldContainer[FilterableField]
    ann: str
    def __init__(self, num_captions: _Optional[int] = ..., decoding_variant: _Optional[str] = ..., preprocessing: _Optional[str] = ..., filterable_fields: _Optional[_Iterable[_Union[FilterableField, _Mapping]]] = ..., ann: _Optional[str] = ...) -> None: ...

class FilterableField(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: FieldType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[FieldType, str]] = ...) -> None: ...

class FilterValue(_message.Message):
    __slots__ = ("string_value", "bool_value")
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    string_value: str
    bool_value: bool
    def __init__(self, string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class FilterValues(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[FilterValue]
    def __init__(self, values: _Optional[_Iterable[_Union[FilterValue, _Mapping]]] = ...) -> None: ...

class NumberRange(_message.Message):
    __slots__ = ("gt", "gte", "lt", "lte")
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class FilterCondition(_message.Message):
    __slots__ = ("field", "equals", "any_of", "range")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    EQUALS_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    field: str
    equals: FilterValue
    any_of: FilterValues
    range: NumberRange
    def __init__(self, field: _Optional[str] = ..., equals: _Optional[_Union[FilterValue, _Mapping]] = ..., any_of: _Optional[_Union[FilterValues, _Mapping]] = ..., range: _Optional[_Union[NumberRange, _Mapping]] = ...) -> None: ...

class SearchFilter(_message.Message):
    __slots__ = ("conditions",)
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    conditions: _containers.RepeatedCompositeFieldContainer[FilterCondition]
    def __init__(self, conditions: _Optional[_Iterable[_Union[FilterCondition, _Mapping]]] = ...) -> None: ...

class ModelsUsed(_message.Message):
    __slots__ = ("encoder", "captioner", "instructcir")
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    CAPTIONER_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTCIR_FIELD_NUMBER: _ClassVar[int]
    encoder: _common_pb2.ModelIdentity
    captioner: _common_pb2.ModelIdentity
    instructcir: _common_pb2.ModelIdentity
    def __init__(self, encoder: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., captioner: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., instructcir: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("collection", "settings")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    settings: CollectionSettings
    def __init__(self, collection: _Optional[str] = ..., settings: _Optional[_Union[CollectionSettings, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection", "settings")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    settings: CollectionSettings
    def __init__(self, collection: _Optional[str] = ..., settings: _Optional[_Union[CollectionSettings, _Mapping]] = ...) -> None: ...

class IngestImagesRequest(_message.Message):
    __slots__ = ("collection", "image")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    image: GalleryImage
    def __init__(self, collection: _Optional[str] = ..., image: _Optional[_Union[GalleryImage, _Mapping]] = ...) -> None: ...

class IngestItemResult(_message.Message):
    __slots__ = ("id", "status", "error_code", "error_message")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: ItemStatus
    error_code: str
    error_message: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[ItemStatus, str]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class IngestProgress(_message.Message):
    __slots__ = ("received", "indexed", "unchanged", "replaced", "failed", "committed")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    received: int
    indexed: int
    unchanged: int
    replaced: int
    failed: int
    committed: int
    def __init__(self, received: _Optional[int] = ..., indexed: _Optional[int] = ..., unchanged: _Optional[int] = ..., replaced: _Optional[int] = ..., failed: _Optional[int] = ..., committed: _Optional[int] = ...) -> None: ...

class IngestImagesResponse(_message.Message):
    __slots__ = ("item", "progress")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    item: IngestItemResult
    progress: IngestProgress
    def __init__(self, item: _Optional[_Union[IngestItemResult, _Mapping]] = ..., progress: _Optional[_Union[IngestProgress, _Mapping]] = ...) -> None: ...

class DeleteImagesRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteImagesResponse(_message.Message):
    __slots__ = ("deleted", "not_found_ids")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, deleted: _Optional[int] = ..., not_found_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("deleted_images",)
    DELETED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    deleted_images: int
    def __init__(self, deleted_images: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "reference_image", "reference_id", "modification_text", "strategy", "preset", "weights", "options", "top_k", "explain", "return_features", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODIFICATION_TEXT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    RETURN_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    reference_image: _common_pb2.Image
    reference_id: str
    modification_text: str
    strategy: Strategy
    preset: Preset
    weights: Weights
    options: StrategyOptions
    top_k: int
    explain: bool
    return_features: bool
    filter: SearchFilter
    def __init__(self, collection: _Optional[str] = ..., reference_image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., reference_id: _Optional[str] = ..., modification_text: _Optional[str] = ..., strategy: _Optional[_Union[Strategy, str]] = ..., preset: _Optional[_Union[Preset, str]] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ..., options: _Optional[_Union[StrategyOptions, _Mapping]] = ..., top_k: _Optional[int] = ..., explain: _Optional[bool] = ..., return_features: _Optional[bool] = ..., filter: _Optional[_Union[SearchFilter, _Mapping]] = ...) -> None: ...

class SearchHit(_message.Message):
    __slots__ = ("id", "score", "uri", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    score: float
    uri: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., score: _Optional[float] = ..., uri: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Degradation(_message.Message):
    __slots__ = ("stage", "reason", "effect")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    stage: str
    reason: str
    effect: str
    def __init__(self, stage: _Optional[str] = ..., reason: _Optional[str] = ..., effect: _Optional[str] = ...) -> None: ...

class ResolvedStrategy(_message.Message):
    __slots__ = ("strategy", "preset", "alpha", "beta", "gamma", "weimocir_a", "weimocir_b", "edit_mode", "objects_caption_selection", "score_function", "weimocir_variant", "edit_template", "caption_features_renormalized", "instructcir_variant")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    WEIMOCIR_A_FIELD_NUMBER: _ClassVar[int]
    WEIMOCIR_B_FIELD_NUMBER: _ClassVar[int]
    EDIT_MODE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_CAPTION_SELECTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    WEIMOCIR_VARIANT_FIELD_NUMBER: _ClassVar[int]
    EDIT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    CAPTION_FEATURES_RENORMALIZED_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTCIR_VARIANT_FIELD_NUMBER: _ClassVar[int]
    strategy: Strategy
    preset: Preset
    alpha: float
    beta: float
    gamma: float
    weimocir_a: float
    weimocir_b: float
    edit_mode: _common_pb2.EditMode
    objects_caption_selection: _common_pb2.CaptionSelection
    score_function: ScoreFunction
    weimocir_variant: WeiMoCirVariant
    edit_template: str
    caption_features_renormalized: bool
    instructcir_variant: InstructCirVariant
    def __init__(self, strategy: _Optional[_Union[Strategy, str]] = ..., preset: _Optional[_Union[Preset, str]] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ..., gamma: _Optional[float] = ..., weimocir_a: _Optional[float] = ..., weimocir_b: _Optional[float] = ..., edit_mode: _Optional[_Union[_common_pb2.EditMode, str]] = ..., objects_caption_selection: _Optional[_Union[_common_pb2.CaptionSelection, str]] = ..., score_function: _Optional[_Union[ScoreFunction, str]] = ..., weimocir_variant: _Optional[_Union[WeiMoCirVariant, str]] = ..., edit_template: _Optional[str] = ..., caption_features_renormalized: _Optional[bool] = ..., instructcir_variant: _Optional[_Union[InstructCirVariant, str]] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("captions", "edited_captions", "added_objects", "fine_grained_prompt", "edit_outcomes", "objects_outcome", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    EDITED_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    ADDED_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    FINE_GRAINED_PROMPT_FIELD_NUMBER: _ClassVar[int]
    EDIT_OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedScalarFieldContainer[str]
    edited_captions: _containers.RepeatedScalarFieldContainer[str]
    added_objects: str
    fine_grained_prompt: str
    edit_outcomes: _containers.RepeatedScalarFieldContainer[str]
    objects_outcome: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, captions: _Optional[_Iterable[str]] = ..., edited_captions: _Optional[_Iterable[str]] = ..., added_objects: _Optional[str] = ..., fine_grained_prompt: _Optional[str] = ..., edit_outcomes: _Optional[_Iterable[str]] = ..., objects_outcome: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "resolved", "explanation", "degradations", "timings", "collection_size", "features")
    HITS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    DEGRADATIONS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_SIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[SearchHit]
    resolved: ResolvedStrategy
    explanation: Explanation
    degradations: _containers.RepeatedCompositeFieldContainer[Degradation]
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    collection_size: int
    features: QueryFeatures
    def __init__(self, hits: _Optional[_Iterable[_Union[SearchHit, _Mapping]]] = ..., resolved: _Optional[_Union[ResolvedStrategy, _Mapping]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., degradations: _Optional[_Iterable[_Union[Degradation, _Mapping]]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ..., collection_size: _Optional[int] = ..., features: _Optional[_Union[QueryFeatures, _Mapping]] = ...) -> None: ...

class QueryFeatures(_message.Message):
    __slots__ = ("reference_image", "modification_text", "captioning_text", "pseudo_token_prompt", "edited_captions", "reference_caption_slots", "reference_captions", "instructcir_query")
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODIFICATION_TEXT_FIELD_NUMBER: _ClassVar[int]
    CAPTIONING_TEXT_FIELD_NUMBER: _ClassVar[int]
    PSEUDO_TOKEN_PROMPT_FIELD_NUMBER: _ClassVar[int]
    EDITED_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_CAPTION_SLOTS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTCIR_QUERY_FIELD_NUMBER: _ClassVar[int]
    reference_image: _common_pb2.Vector
    modification_text: _common_pb2.Vector
    captioning_text: _common_pb2.Vector
    pseudo_token_prompt: _common_pb2.Vector
    edited_captions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    reference_caption_slots: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    reference_captions: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    instructcir_query: _common_pb2.Vector
    def __init__(self, reference_image: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., modification_text: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., captioning_text: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., pseudo_token_prompt: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., edited_captions: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., reference_caption_slots: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., reference_captions: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., instructcir_query: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ...) -> None: ...

class GetCollectionInfoRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class GetCollectionInfoResponse(_message.Message):
    __slots__ = ("collection", "size", "embedding_dim", "settings", "models", "strategies_available", "created_at", "updated_at")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    collection: str
    size: int
    embedding_dim: int
    settings: CollectionSettings
    models: ModelsUsed
    strategies_available: _containers.RepeatedScalarFieldContainer[Strategy]
    created_at: str
    updated_at: str
    def __init__(self, collection: _Optional[str] = ..., size: _Optional[int] = ..., embedding_dim: _Optional[int] = ..., settings: _Optional[_Union[CollectionSettings, _Mapping]] = ..., models: _Optional[_Union[ModelsUsed, _Mapping]] = ..., strategies_available: _Optional[_Iterable[_Union[Strategy, str]]] = ..., created_at: _Optional[str] = ..., updated_at: _Optional[str] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collections: _Optional[_Iterable[str]] = ...) -> None: ...

class ListStrategiesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StrategyInfo(_message.Message):
    __slots__ = ("strategy", "name", "description", "available", "unavailable_reason", "presets", "uses_captioner", "uses_reasoner")
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_REASON_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    USES_CAPTIONER_FIELD_NUMBER: _ClassVar[int]
    USES_REASONER_FIELD_NUMBER: _ClassVar[int]
    strategy: Strategy
    name: str
    description: str
    available: bool
    unavailable_reason: str
    presets: _containers.RepeatedScalarFieldContainer[Preset]
    uses_captioner: bool
    uses_reasoner: bool
    def __init__(self, strategy: _Optional[_Union[Strategy, str]] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., available: _Optional[bool] = ..., unavailable_reason: _Optional[str] = ..., presets: _Optional[_Iterable[_Union[Preset, str]]] = ..., uses_captioner: _Optional[bool] = ..., uses_reasoner: _Optional[bool] = ...) -> None: ...

class ListStrategiesResponse(_message.Message):
    __slots__ = ("strategies",)
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    strategies: _containers.RepeatedCompositeFieldContainer[StrategyInfo]
    def __init__(self, strategies: _Optional[_Iterable[_Union[StrategyInfo, _Mapping]]] = ...) -> None: ...

class ExportGalleryFeaturesRequest(_message.Message):
    __slots__ = ("collection", "page_size")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ...) -> None: ...

class GalleryImageFeatures(_message.Message):
    __slots__ = ("id", "uri", "image", "caption_mean", "caption_slots", "image_raw", "captions", "content_sha256", "metadata", "instructcir_target")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CAPTION_MEAN_FIELD_NUMBER: _ClassVar[int]
    CAPTION_SLOTS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_RAW_FIELD_NUMBER: _ClassVar[int]
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTCIR_TARGET_FIELD_NUMBER: _ClassVar[int]
    id: str
    uri: str
    image: _common_pb2.Vector
    caption_mean: _common_pb2.Vector
    caption_slots: _containers.RepeatedCompositeFieldContainer[_common_pb2.Vector]
    image_raw: _common_pb2.Vector
    captions: _containers.RepeatedScalarFieldContainer[str]
    content_sha256: str
    metadata: _containers.ScalarMap[str, str]
    instructcir_target: _common_pb2.Vector
    def __init__(self, id: _Optional[str] = ..., uri: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., caption_mean: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., caption_slots: _Optional[_Iterable[_Union[_common_pb2.Vector, _Mapping]]] = ..., image_raw: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ..., captions: _Optional[_Iterable[str]] = ..., content_sha256: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., instructcir_target: _Optional[_Union[_common_pb2.Vector, _Mapping]] = ...) -> None: ...

class ExportGalleryFeaturesResponse(_message.Message):
    __slots__ = ("images", "total")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[GalleryImageFeatures]
    total: int
    def __init__(self, images: _Optional[_Iterable[_Union[GalleryImageFeatures, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class ImportGalleryFeaturesRequest(_message.Message):
    __slots__ = ("collection", "models", "embedding_dim", "images")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    models: ModelsUsed
    embedding_dim: int
    images: _containers.RepeatedCompositeFieldContainer[GalleryImageFeatures]
    def __init__(self, collection: _Optional[str] = ..., models: _Optional[_Union[ModelsUsed, _Mapping]] = ..., embedding_dim: _Optional[int] = ..., images: _Optional[_Iterable[_Union[GalleryImageFeatures, _Mapping]]] = ...) -> None: ...

class ImportGalleryFeaturesResponse(_message.Message):
    __slots__ = ("received", "indexed", "unchanged", "replaced")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    INDEXED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    received: int
    indexed: int
    unchanged: int
    replaced: int
    def __init__(self, received: _Optional[int] = ..., indexed: _Optional[int] = ..., unchanged: _Optional[int] = ..., replaced: _Optional[int] = ...) -> None: ...

class GetServiceStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetServiceStatsResponse(_message.Message):
    __slots__ = ("searches", "degraded_searches", "degradations_by_stage", "started_at")
    class DegradationsByStageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SEARCHES_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_SEARCHES_FIELD_NUMBER: _ClassVar[int]
    DEGRADATIONS_BY_STAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    searches: int
    degraded_searches: int
    degradations_by_stage: _containers.ScalarMap[str, int]
    started_at: str
    def __init__(self, searches: _Optional[int] = ..., degraded_searches: _Optional[int] = ..., degradations_by_stage: _Optional[_Mapping[str, int]] = ..., started_at: _Optional[str] = ...) -> None: ...
