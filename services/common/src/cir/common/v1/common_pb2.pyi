from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class VectorFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VECTOR_FORMAT_UNSPECIFIED: _ClassVar[VectorFormat]
    VECTOR_FORMAT_FLOATS: _ClassVar[VectorFormat]
    VECTOR_FORMAT_PACKED_F32: _ClassVar[VectorFormat]

class CaptionSelection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPTION_SELECTION_UNSPECIFIED: _ClassVar[CaptionSelection]
    CAPTION_SELECTION_FIRST: _ClassVar[CaptionSelection]
    CAPTION_SELECTION_ALL_JOINED: _ClassVar[CaptionSelection]

class EditMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EDIT_MODE_UNSPECIFIED: _ClassVar[EditMode]
    EDIT_MODE_PER_CAPTION: _ClassVar[EditMode]
    EDIT_MODE_JOINED: _ClassVar[EditMode]
VECTOR_FORMAT_UNSPECIFIED: VectorFormat
VECTOR_FORMAT_FLOATS: VectorFormat
VECTOR_FORMAT_PACKED_F32: VectorFormat
CAPTION_SELECTION_UNSPECIFIED: CaptionSelection
CAPTION_SELECTION_FIRST: CaptionSelection
CAPTION_SELECTION_ALL_JOINED: CaptionSelection
EDIT_MODE_UNSPECIFIED: EditMode
EDIT_MODE_PER_CAPTION: EditMode
EDIT_MODE_JOINED: EditMode

class Image(_message.Message):
    __slots__ = ("data", "uri")
    DATA_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    uri: str
    def __init__(self, data: _Optional[bytes] = ..., uri: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values", "packed_f32le", "dim")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    PACKED_F32LE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    packed_f32le: bytes
    dim: int
    def __init__(self, values: _Optional[_Iterable[float]] = ..., packed_f32le: _Optional[bytes] = ..., dim: _Optional[int] = ...) -> None: ...

class ModelIdentity(_message.Message):
    __slots__ = ("name", "revision", "family", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: str
    family: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[str] = ..., family: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StageTiming(_message.Message):
    __slots__ = ("stage", "milliseconds")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    MILLISECONDS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    milliseconds: float
    def __init__(self, stage: _Optional[str] = ..., milliseconds: _Optional[float] = ...) -> None: ...
