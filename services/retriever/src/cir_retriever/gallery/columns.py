"""Typed filterable metadata as numpy columns aligned with the search rows, and filters evaluated on them.

Strings and bools are stored as int32 codes (-1: the image has no value), so `equals` / `any_of` compare
integers and a caller's string is only ever a dictionary key: quotes, expression syntax or backslashes in a
value match literally or not at all. Numbers are float64 with a "has value" mask; an int is compared as
`float(value)`, exactly as the reference `filters.matches` does.

Arrays are written only at rows beyond what any published search view covers, so a reader never sees a
half-written row; growing or compacting makes new arrays (the old view keeps the old ones).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cir_retriever.gallery.filters import TypedValue
from cir_retriever.gallery.types import AnyOf, Condition, Equals, FieldType, Filter, FilterableField

_MISSING = -1
_NUMERIC = (FieldType.INT, FieldType.FLOAT)


class FilterColumns:
    """One column per declared field (codes or numbers + mask), `capacity` rows each."""

    def __init__(self, fields: Sequence[FilterableField], capacity: int) -> None:
        self.fields = {spec.name: spec for spec in fields}
        self.capacity = capacity
        self._codes: dict[str, np.ndarray] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._has: dict[str, np.ndarray] = {}
        # value -> code per string field; append-only and shared by every copy (codes never change meaning).
        self._vocabulary: dict[str, dict[str, int]] = {}
        for spec in fields:
            if spec.type in _NUMERIC:
                self._numbers[spec.name] = np.zeros(capacity, np.float64)
                self._has[spec.name] = np.zeros(capacity, bool)
            else:
                self._codes[spec.name] = np.full(capacity, _MISSING, np.int32)
                if spec.type is FieldType.STRING:
                    self._vocabulary[spec.name] = {}

    @property
    def nbytes(self) -> int:
        columns = (*self._codes.values(), *self._numbers.values(), *self._has.values())
        return sum(column.nbytes for column in columns)

    def _like(self, capacity: int) -> FilterColumns:
        copy = FilterColumns((), capacity)
        copy.fields, copy._vocabulary = self.fields, self._vocabulary
        return copy

    def grown(self, capacity: int, rows: int) -> FilterColumns:
        """A copy with room for `capacity` rows holding the first `rows`."""
        copy = self._like(capacity)
        for name, codes in self._codes.items():
            copy._codes[name] = np.full(capacity, _MISSING, np.int32)
            copy._codes[name][:rows] = codes[:rows]
        for name, numbers in self._numbers.items():
            copy._numbers[name] = np.zeros(capacity, np.float64)
            copy._numbers[name][:rows] = numbers[:rows]
            copy._has[name] = np.zeros(capacity, bool)
            copy._has[name][:rows] = self._has[name][:rows]
        return copy

    def compacted(self, keep: np.ndarray, capacity: int) -> FilterColumns:
        """A copy holding only the rows `keep` (in that order), with room for `capacity` rows."""
        copy = self._like(capacity)
        for name, codes in self._codes.items():
            copy._codes[name] = np.full(capacity, _MISSING, np.int32)
            copy._codes[name][: keep.size] = codes[keep]
        for name, numbers in self._numbers.items():
            copy._numbers[name] = np.zeros(capacity, np.float64)
            copy._numbers[name][: keep.size] = numbers[keep]
            copy._has[name] = np.zeros(capacity, bool)
            copy._has[name][: keep.size] = self._has[name][keep]
        return copy

    def write(self, start: int, values: Sequence[Mapping[str, TypedValue]]) -> None:
        """Rows start, start + 1, ... get these typed values (absent keys: no value)."""
        by_field: dict[str, tuple[list[int], list[TypedValue]]] = {}
        for offset, row_values in enumerate(values):
            for name, value in row_values.items():
                rows, field_values = by_field.setdefault(name, ([], []))
                rows.append(start + offset)
                field_values.append(value)
        for name, (rows, field_values) in by_field.items():
            self.put(name, np.array(rows, np.int64), field_values)

    def put(self, name: str, rows: np.ndarray, values: Sequence[TypedValue]) -> None:
        """Sets one field's value at `rows` (rows not yet visible to any search, or a view being loaded)."""
        spec = self.fields.get(name)
        if spec is None:
            return  # a value stored for a field the collection no longer declares: not filterable
        if spec.type in _NUMERIC:
            self._numbers[name][rows] = [float(v) for v in values]
            self._has[name][rows] = True
        elif spec.type is FieldType.BOOL:
            self._codes[name][rows] = [int(bool(v)) for v in values]
        else:
            vocabulary = self._vocabulary[name]
            self._codes[name][rows] = [vocabulary.setdefault(str(v), len(vocabulary)) for v in values]

    def mask(self, where: Filter, rows: int) -> np.ndarray:
        """Which of the first `rows` rows match every condition (the caller validated `where`)."""
        result = np.ones(rows, bool)
        for condition in where.conditions:
            result &= self._matches(condition, rows)
        return result

    def _matches(self, condition: Condition, rows: int) -> np.ndarray:
        name, test = condition.field, condition.test
        spec = self.fields[name]
        if spec.type in _NUMERIC:
            if isinstance(test, Equals | AnyOf):
                return np.zeros(rows, bool)  # validate_filter refuses these: nothing matches
            numbers, result = self._numbers[name][:rows], self._has[name][:rows].copy()
            for bound, compare in (
                (test.gt, np.greater),
                (test.gte, np.greater_equal),
                (test.lt, np.less),
                (test.lte, np.less_equal),
            ):
                if bound is not None:
                    result &= compare(numbers, float(bound))
            return result
        if not isinstance(test, Equals | AnyOf):
            return np.zeros(rows, bool)
        wanted = [
            self._code(spec, value) for value in ((test.value,) if isinstance(test, Equals) else test.values)
        ]
        codes = np.array([c for c in wanted if c is not None], np.int32)
        column = self._codes[name][:rows]
        if codes.size == 0:
            return np.zeros(rows, bool)
        if codes.size == 1:
            return column == codes[0]
        return np.isin(column, codes)

    def _code(self, spec: FilterableField, value: str | bool) -> int | None:
        """The code of a filter value, None when no stored image can have it (the type is the field's)."""
        if spec.type is FieldType.BOOL:
            return int(value) if isinstance(value, bool) else None
        return self._vocabulary[spec.name].get(value) if isinstance(value, str) else None
