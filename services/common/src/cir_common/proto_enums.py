"""Each choice (a StrEnum of the vocabulary or of a service) against the proto enum that carries it.

A member's proto value is the one named `<PREFIX><MEMBER NAME>`, `<PREFIX>` being the name of the proto
enum's zero value without `UNSPECIFIED` (so StrategyName.CVSI is STRATEGY_CVSI, by the protos' naming rule).
Built from the names, a member that its proto enum lacks fails at import, not in a request. The zero
value (unspecified: "the default") is in no table.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from cir.captioner.v1 import captioner_pb2
from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2
from cir_common.errors import InvalidArgument
from cir_common.vocabulary import CaptionSelection, DecodingVariant, EditMode, Preprocessing

E = TypeVar("E", bound=StrEnum)


def to_proto(choices: type[E], proto: EnumTypeWrapper) -> dict[E, int]:
    """Every member of `choices` to its value of `proto`."""
    prefix = proto.Name(0).removesuffix("UNSPECIFIED")
    return {member: proto.Value(prefix + member.name) for member in choices}


def from_proto(value: int, table: Mapping[E, int], field: str) -> E | None:
    """The choice a proto value names in a `to_proto` table: None for 0 (unspecified: the default
    applies); InvalidArgument naming `field` for a value unknown here."""
    if value == 0:
        return None
    for choice, number in table.items():
        if number == value:
            return choice
    raise InvalidArgument(f"unknown {field} value {value}")


# The shared choices' tables: the services that serve a field and the retriever that calls them read the
# same one.
PREPROCESSING_TO_PROTO = to_proto(Preprocessing, encoder_pb2.Preprocessing)
DECODING_TO_PROTO = to_proto(DecodingVariant, captioner_pb2.DecodingVariant)
EDIT_MODE_TO_PROTO = to_proto(EditMode, common_pb2.EditMode)
CAPTION_SELECTION_TO_PROTO = to_proto(CaptionSelection, common_pb2.CaptionSelection)
