"""Filter checks (one place for both backends) and the CLI's --where / --filterable parsing."""

from __future__ import annotations

import pytest

from cir.retriever.v1 import retriever_pb2
from cir_client.retriever import UsageError, parse_filterable, parse_where
from cir_common.errors import InvalidArgument
from cir_retriever.conversions import collection_settings_from_proto, filter_from_proto
from cir_retriever.gallery.filters import (
    matches,
    parse_value,
    typed_metadata,
    validate_fields,
    validate_filter,
)
from cir_retriever.gallery.types import AnyOf, Condition, Equals, FieldType, Filter, FilterableField, Range

FIELDS = (
    FilterableField("color", FieldType.STRING),
    FilterableField("price", FieldType.FLOAT),
    FilterableField("size", FieldType.INT),
    FilterableField("in_stock", FieldType.BOOL),
)


@pytest.mark.parametrize(
    ("condition", "needle"),
    [
        (Condition("colour", Equals("red")), "filter condition 1 ('colour'): the collection declares no"),
        (Condition("color", AnyOf(())), "any_of is empty"),
        (Condition("color", Range(lt=3)), "a range needs an int or float field"),
        (Condition("price", Equals("3")), "compare it with a range"),
        (Condition("price", Range()), "the range has no bound"),
        (Condition("price", Range(lt=float("nan"))), "finite"),
        (Condition("in_stock", Equals("true")), "in_stock is a bool field, but a value is a str"),
        (Condition("color", Equals(True)), "color is a string field, but a value is a bool"),
    ],
)
def test_bad_filters_name_the_condition(condition, needle):
    with pytest.raises(InvalidArgument, match=None) as raised:
        validate_filter(Filter((Condition("size", Range(gte=1)), condition)), FIELDS)
    assert needle.replace("condition 1", "condition 2") in raised.value.message


def test_a_good_filter_passes_and_matches_as_documented():
    where = Filter(
        (
            Condition("color", AnyOf(("red", "blue"))),
            Condition("price", Range(gte=10, lt=50)),
            Condition("in_stock", Equals(True)),
        )
    )
    assert validate_filter(where, FIELDS) is where
    assert matches(where.conditions[1], 10.0) and not matches(where.conditions[1], 50.0)
    assert matches(where.conditions[0], "blue") and not matches(where.conditions[0], "Blue")
    assert not matches(where.conditions[2], None)  # an image without the field matches no condition


def test_metadata_values_parse_as_declared():
    assert typed_metadata({"price": " 49.5", "size": "7", "in_stock": "TRUE", "other": "x"}, FIELDS) == {
        "price": 49.5,
        "size": 7,
        "in_stock": True,
    }
    for spec, text in ((FIELDS[1], "cheap"), (FIELDS[1], "inf"), (FIELDS[2], "7.5"), (FIELDS[3], "yes")):
        with pytest.raises(InvalidArgument, match=f"metadata {spec.name} = "):
            parse_value(spec, text)
    huge = "x" * 100_000
    with pytest.raises(InvalidArgument) as raised:
        parse_value(FIELDS[1], huge)
    assert len(raised.value.message) < 300  # the caller's input is not echoed whole


def test_declared_fields_are_identifiers():
    for name in ("", "1abc", "a-b", "a b", "x" * 64, 'a"'):
        with pytest.raises(InvalidArgument, match="filterable field name"):
            validate_fields((FilterableField(name, FieldType.STRING),))
    with pytest.raises(InvalidArgument, match="declared twice"):
        validate_fields((FIELDS[0], FIELDS[0]))


def test_filter_and_settings_from_proto():
    message = retriever_pb2.SearchFilter(
        conditions=[
            retriever_pb2.FilterCondition(
                field="color", equals=retriever_pb2.FilterValue(string_value="red")
            ),
            retriever_pb2.FilterCondition(field="price", range=retriever_pb2.NumberRange(lte=5.0)),
        ]
    )
    assert filter_from_proto(message) == Filter(
        (Condition("color", Equals("red")), Condition("price", Range(lte=5.0)))
    )
    with pytest.raises(InvalidArgument, match="has no test"):
        filter_from_proto(retriever_pb2.SearchFilter(conditions=[retriever_pb2.FilterCondition(field="x")]))
    settings = retriever_pb2.CollectionSettings(filterable_fields=[retriever_pb2.FilterableField(name="x")])
    with pytest.raises(InvalidArgument, match="has no type"):
        collection_settings_from_proto(settings)


def test_cli_where_is_typed_by_the_declared_fields():
    declared = parse_filterable("color:string,price:float,in_stock:bool")
    parsed = parse_where(["color in red, blue", "price<50", "in_stock=true", "color=true"], declared)
    assert filter_from_proto(parsed) == Filter(
        (
            Condition("color", AnyOf(("red", "blue"))),
            Condition("price", Range(lt=50.0)),
            Condition("in_stock", Equals(True)),
            Condition("color", Equals("true")),  # a string field keeps "true" a string
        )
    )
    for bad in ("colour=red", "price<cheap", "color<3", "in_stock=maybe", "nonsense"):
        with pytest.raises(UsageError):
            parse_where([bad], declared)
    with pytest.raises(UsageError, match="NAME:TYPE"):
        parse_filterable("color:text")
