"""Each choice (a StrEnum of the vocabulary or of the retriever) against the proto enum that carries it.

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

from cir_common.errors import InvalidArgument

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
    raise InvalidArgument(f"{field} has an unknown value {value}")
