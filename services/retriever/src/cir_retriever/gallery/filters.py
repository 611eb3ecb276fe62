"""Filterable metadata: declared fields, typed values, and the checks a search filter must pass.

Metadata arrives as strings (`GalleryImage.metadata`); a collection declares which keys are filterable
and their types, and each backend keeps those values typed (SQLite/numpy columns, Milvus scalar fields).
A filter is checked here, once, before any backend sees it, so both backends accept exactly the same
filters and answer them with the same semantics (`matches` is the reference a backend must agree with).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cir_common.errors import InvalidArgument
from cir_retriever.gallery.types import AnyOf, Condition, Equals, FieldType, Filter, FilterableField, Range

TypedValue = str | int | float | bool

# Field names become column / Milvus field names: keep them to identifiers.
_FIELD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
MAX_FIELDS = 32
MAX_CONDITIONS = 32
MAX_ANY_OF_VALUES = 1024
MAX_STRING_VALUE_CHARS = 1024
_TRUE = {"true", "1"}
_FALSE = {"false", "0"}
# int fields hold 64-bit integers (Milvus INT64).
_INT64 = (-(2**63), 2**63 - 1)


def validate_fields(fields: Sequence[FilterableField]) -> tuple[FilterableField, ...]:
    """The declared fields of a new collection, checked: identifier names, no duplicates, a bounded count."""
    if len(fields) > MAX_FIELDS:
        raise InvalidArgument(f"{len(fields)} filterable fields declared; at most {MAX_FIELDS} are allowed")
    seen: set[str] = set()
    for spec in fields:
        if not _FIELD_NAME.match(spec.name):
            raise InvalidArgument(
                f"filterable field name {_clip(spec.name)!r} is not valid: use 1-63 letters, digits or '_', "
                "starting with a letter"
            )
        if spec.name in seen:
            raise InvalidArgument(f"filterable field {spec.name!r} is declared twice")
        seen.add(spec.name)
    return tuple(fields)


def parse_value(spec: FilterableField, text: str) -> TypedValue:
    """A metadata string as the declared type; InvalidArgument saying what was expected."""
    try:
        if spec.type is FieldType.STRING:
            if len(text) > MAX_STRING_VALUE_CHARS:
                raise ValueError(f"longer than {MAX_STRING_VALUE_CHARS} characters")
            return text
        if spec.type is FieldType.BOOL:
            lowered = text.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError("expected true or false")
        if spec.type is FieldType.INT:
            value = _number(text, int, "expected an integer")
            if not _INT64[0] <= value <= _INT64[1]:
                raise ValueError("outside the 64-bit integer range")
            return value
        number = _number(text, float, "expected a number")
        if not math.isfinite(number):
            raise ValueError("expected a finite number")
        return number
    except ValueError as error:
        raise InvalidArgument(
            f"metadata {spec.name} = {_clip(text)!r} is not a valid {spec.type.value}: {error}"
        ) from None


def _number(text: str, kind: type[int] | type[float], expected: str) -> Any:
    """`kind(text)` with our own message: Python's echoes the whole input, however long."""
    try:
        return kind(text.strip())
    except ValueError:
        raise ValueError(expected) from None


def typed_metadata(metadata: Mapping[str, str], fields: Sequence[FilterableField]) -> dict[str, TypedValue]:
    """The declared fields' typed values from an image's metadata (absent keys stay absent)."""
    return {spec.name: parse_value(spec, metadata[spec.name]) for spec in fields if spec.name in metadata}


def validate_filter(where: Filter, fields: Sequence[FilterableField]) -> Filter:
    """`where` checked against the collection's declared fields; InvalidArgument naming the condition."""
    if len(where.conditions) > MAX_CONDITIONS:
        raise InvalidArgument(
            f"filter has {len(where.conditions)} conditions; at most {MAX_CONDITIONS} are allowed"
        )
    declared = {spec.name: spec for spec in fields}
    for number, condition in enumerate(where.conditions, start=1):
        where_text = f"filter condition {number} ({_clip(condition.field)!r})"
        spec = declared.get(condition.field)
        if spec is None:
            names = ", ".join(sorted(declared)) or "none"
            raise InvalidArgument(
                f"{where_text}: the collection declares no filterable field of that name "
                f"(filterable fields: {_clip(names, 400)})"
            )
        _check_test(where_text, spec, condition.test)
    return where


def _check_test(where_text: str, spec: FilterableField, test: Equals | AnyOf | Range) -> None:
    if isinstance(test, Range):
        if spec.type not in (FieldType.INT, FieldType.FLOAT):
            raise InvalidArgument(
                f"{where_text}: a range needs an int or float field; {spec.name} is {spec.type.value} "
                "(use equals or any_of)"
            )
        bounds = [b for b in (test.gt, test.gte, test.lt, test.lte) if b is not None]
        if not bounds:
            raise InvalidArgument(f"{where_text}: the range has no bound; give gt, gte, lt or lte")
        if not all(math.isfinite(b) for b in bounds):
            raise InvalidArgument(f"{where_text}: range bounds must be finite numbers")
        return
    if spec.type in (FieldType.INT, FieldType.FLOAT):
        raise InvalidArgument(
            f"{where_text}: {spec.name} is a {spec.type.value} field: compare it with a range (gte = lte for "
            "equality)"
        )
    values = (test.value,) if isinstance(test, Equals) else test.values
    if isinstance(test, AnyOf):
        if not values:
            raise InvalidArgument(f"{where_text}: any_of is empty; give at least one value")
        if len(values) > MAX_ANY_OF_VALUES:
            raise InvalidArgument(
                f"{where_text}: any_of has {len(values)} values; at most {MAX_ANY_OF_VALUES}"
            )
    want = bool if spec.type is FieldType.BOOL else str
    for value in values:
        if type(value) is not want:
            raise InvalidArgument(
                f"{where_text}: {spec.name} is a {spec.type.value} field, "
                f"but a value is a {type(value).__name__}"
            )
        if isinstance(value, str) and len(value) > MAX_STRING_VALUE_CHARS:
            raise InvalidArgument(f"{where_text}: a value is longer than {MAX_STRING_VALUE_CHARS} characters")


def matches(condition: Condition, value: TypedValue | None) -> bool:
    """The reference semantics of one condition on one image's value (None: the image has no value)."""
    if value is None:
        return False
    test = condition.test
    if isinstance(test, Equals):
        return value == test.value
    if isinstance(test, AnyOf):
        return value in test.values
    number = float(value)
    return (
        (test.gt is None or number > test.gt)
        and (test.gte is None or number >= test.gte)
        and (test.lt is None or number < test.lt)
        and (test.lte is None or number <= test.lte)
    )


def _clip(text: str, limit: int = 64) -> str:
    """Caller input echoed in a message, cut so that a huge value cannot fill the status trailer."""
    return text if len(text) <= limit else text[:limit] + "…"
