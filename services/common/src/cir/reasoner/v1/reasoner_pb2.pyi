from cir.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ParseOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARSE_OUTCOME_UNSPECIFIED: _ClassVar[ParseOutcome]
    PARSE_OUTCOME_PARSED: _ClassVar[ParseOutcome]
    PARSE_OUTCOME_FALLBACK_EMPTY: _ClassVar[ParseOutcome]
    PARSE_OUTCOME_FALLBACK_ERROR: _ClassVar[ParseOutcome]

class TemplateTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEMPLATE_TASK_UNSPECIFIED: _ClassVar[TemplateTask]
    TEMPLATE_TASK_EDIT: _ClassVar[TemplateTask]
    TEMPLATE_TASK_OBJECTS_ADDED: _ClassVar[TemplateTask]
    TEMPLATE_TASK_DIFFERENCE: _ClassVar[TemplateTask]
PARSE_OUTCOME_UNSPECIFIED: ParseOutcome
PARSE_OUTCOME_PARSED: ParseOutcome
PARSE_OUTCOME_FALLBACK_EMPTY: ParseOutcome
PARSE_OUTCOME_FALLBACK_ERROR: ParseOutcome
TEMPLATE_TASK_UNSPECIFIED: TemplateTask
TEMPLATE_TASK_EDIT: TemplateTask
TEMPLATE_TASK_OBJECTS_ADDED: TemplateTask
TEMPLATE_TASK_DIFFERENCE: TemplateTask

class SamplingParameters(_message.Message):
    __slots__ = ("temperature", "max_tokens", "stop", "top_p", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    top_p: float
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class ReasonedText(_message.Message):
    __slots__ = ("text", "outcome", "fallback_reason", "raw_output", "caption_indices", "cache_hit")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    CAPTION_INDICES_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    text: str
    outcome: ParseOutcome
    fallback_reason: str
    raw_output: str
    caption_indices: _containers.RepeatedScalarFieldContainer[int]
    cache_hit: bool
    def __init__(self, text: _Optional[str] = ..., outcome: _Optional[_Union[ParseOutcome, str]] = ..., fallback_reason: _Optional[str] = ..., raw_output: _Optional[str] = ..., caption_indices: _Optional[_Iterable[int]] = ..., cache_hit: _Optional[bool] = ...) -> None: ...

class EditCaptionsRequest(_message.Message):
    __slots__ = ("captions", "instruction", "mode", "template", "sampling", "bypass_cache")
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedScalarFieldContainer[str]
    instruction: str
    mode: _common_pb2.EditMode
    template: str
    sampling: SamplingParameters
    bypass_cache: bool
    def __init__(self, captions: _Optional[_Iterable[str]] = ..., instruction: _Optional[str] = ..., mode: _Optional[_Union[_common_pb2.EditMode, str]] = ..., template: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class EditCaptionsResponse(_message.Message):
    __slots__ = ("edits", "mode", "template", "template_version", "captions_used", "captions_truncated", "model", "timings")
    EDITS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPTIONS_USED_FIELD_NUMBER: _ClassVar[int]
    CAPTIONS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    edits: _containers.RepeatedCompositeFieldContainer[ReasonedText]
    mode: _common_pb2.EditMode
    template: str
    template_version: str
    captions_used: int
    captions_truncated: bool
    model: _common_pb2.ModelIdentity
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, edits: _Optional[_Iterable[_Union[ReasonedText, _Mapping]]] = ..., mode: _Optional[_Union[_common_pb2.EditMode, str]] = ..., template: _Optional[str] = ..., template_version: _Optional[str] = ..., captions_used: _Optional[int] = ..., captions_truncated: _Optional[bool] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class InferAddedObjectsRequest(_message.Message):
    __slots__ = ("captions", "instruction", "caption_selection", "template", "sampling", "bypass_cache")
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    CAPTION_SELECTION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    captions: _containers.RepeatedScalarFieldContainer[str]
    instruction: str
    caption_selection: _common_pb2.CaptionSelection
    template: str
    sampling: SamplingParameters
    bypass_cache: bool
    def __init__(self, captions: _Optional[_Iterable[str]] = ..., instruction: _Optional[str] = ..., caption_selection: _Optional[_Union[_common_pb2.CaptionSelection, str]] = ..., template: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class InferAddedObjectsResponse(_message.Message):
    __slots__ = ("objects", "caption_selection", "template", "template_version", "captions_used", "captions_truncated", "model", "timings")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CAPTION_SELECTION_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPTIONS_USED_FIELD_NUMBER: _ClassVar[int]
    CAPTIONS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    objects: ReasonedText
    caption_selection: _common_pb2.CaptionSelection
    template: str
    template_version: str
    captions_used: int
    captions_truncated: bool
    model: _common_pb2.ModelIdentity
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, objects: _Optional[_Union[ReasonedText, _Mapping]] = ..., caption_selection: _Optional[_Union[_common_pb2.CaptionSelection, str]] = ..., template: _Optional[str] = ..., template_version: _Optional[str] = ..., captions_used: _Optional[int] = ..., captions_truncated: _Optional[bool] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class CaptionPair(_message.Message):
    __slots__ = ("caption_a", "caption_b")
    CAPTION_A_FIELD_NUMBER: _ClassVar[int]
    CAPTION_B_FIELD_NUMBER: _ClassVar[int]
    caption_a: str
    caption_b: str
    def __init__(self, caption_a: _Optional[str] = ..., caption_b: _Optional[str] = ...) -> None: ...

class DescribeDifferencesRequest(_message.Message):
    __slots__ = ("pairs", "template", "sampling", "bypass_cache")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    BYPASS_CACHE_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[CaptionPair]
    template: str
    sampling: SamplingParameters
    bypass_cache: bool
    def __init__(self, pairs: _Optional[_Iterable[_Union[CaptionPair, _Mapping]]] = ..., template: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ..., bypass_cache: _Optional[bool] = ...) -> None: ...

class DescribeDifferencesResponse(_message.Message):
    __slots__ = ("differences", "template", "template_version", "model", "timings")
    DIFFERENCES_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    differences: _containers.RepeatedCompositeFieldContainer[ReasonedText]
    template: str
    template_version: str
    model: _common_pb2.ModelIdentity
    timings: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageTiming]
    def __init__(self, differences: _Optional[_Iterable[_Union[ReasonedText, _Mapping]]] = ..., template: _Optional[str] = ..., template_version: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., timings: _Optional[_Iterable[_Union[_common_pb2.StageTiming, _Mapping]]] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TemplateInfo(_message.Message):
    __slots__ = ("name", "version", "task", "description", "builtin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BUILTIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    task: TemplateTask
    description: str
    builtin: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., task: _Optional[_Union[TemplateTask, str]] = ..., description: _Optional[str] = ..., builtin: _Optional[bool] = ...) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates",)
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[TemplateInfo]
    def __init__(self, templates: _Optional[_Iterable[_Union[TemplateInfo, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "backend", "default_sampling", "chat_template", "max_captions_per_request", "max_prompt_tokens", "max_output_tokens", "default_edit_template", "generations_in_flight", "generations_aborted", "default_difference_template", "max_pairs_per_request")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MAX_CAPTIONS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_EDIT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    GENERATIONS_ABORTED_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DIFFERENCE_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MAX_PAIRS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelIdentity
    backend: str
    default_sampling: SamplingParameters
    chat_template: bool
    max_captions_per_request: int
    max_prompt_tokens: int
    max_output_tokens: int
    default_edit_template: str
    generations_in_flight: int
    generations_aborted: int
    default_difference_template: str
    max_pairs_per_request: int
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelIdentity, _Mapping]] = ..., backend: _Optional[str] = ..., default_sampling: _Optional[_Union[SamplingParameters, _Mapping]] = ..., chat_template: _Optional[bool] = ..., max_captions_per_request: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., default_edit_template: _Optional[str] = ..., generations_in_flight: _Optional[int] = ..., generations_aborted: _Optional[int] = ..., default_difference_template: _Optional[str] = ..., max_pairs_per_request: _Optional[int] = ...) -> None: ...
