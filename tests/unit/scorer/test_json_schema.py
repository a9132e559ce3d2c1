"""The `json_schema` check on full JSON Schema drafts (the `jsonschema` library), and the bounds
that keep a hostile schema or answer a verdict: timeouts, unusable schemas, linear `uniqueItems`."""

import json
import threading
import time
from typing import Any

import pytest

from contracts.references import JsonSchema
from services.scorer.deadline import Deadline
from services.scorer.references import check

BACKTRACKING = "(.|.)*\u0001"  # 2^n ways to fail on "a" * n
SLOW_KEY = "\u0001" + "a" * 5_000  # the \x01 is found only after backtracking through the rest


def schema_check(schema: dict[str, Any], answer: object, timeout_s: float = 1.0) -> Any:
    return check(JsonSchema(schema=schema, allow_fence=False), json.dumps(answer), Deadline(timeout_s))


# ---- keywords the old subset validator refused -----------------------------------------------

SHAPE = {
    "$defs": {"point": {"type": "array", "prefixItems": [{"type": "number"}, {"type": "number"}], "items": False}},
    "oneOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number", "exclusiveMinimum": 0}}},
        {
            "type": "object",
            "properties": {"kind": {"const": "polygon"}, "points": {"items": {"$ref": "#/$defs/point"}}},
        },
    ],
    "required": ["kind"],
}


@pytest.mark.parametrize(
    ("answer", "passed"),
    [
        ({"kind": "circle", "r": 2}, True),
        ({"kind": "polygon", "points": [[0, 0], [1, 0.5]]}, True),
        ({"kind": "polygon", "points": [[0, 0, 1]]}, False),  # prefixItems then items: false
        ({"kind": "polygon", "points": [["x", 0]]}, False),  # through $ref
        ({"kind": "circle", "r": 0}, False),
        ({"r": 1}, False),
    ],
)
def test_composition_refs_and_tuples(answer: object, passed: bool) -> None:
    assert schema_check(SHAPE, answer).passed is passed


def test_conditionals_dependencies_and_unevaluated_properties() -> None:
    schema = {
        "type": "object",
        "properties": {"country": {"type": "string"}},
        "if": {"properties": {"country": {"const": "FR"}}},
        "then": {"properties": {"postcode": {"pattern": "^[0-9]{5}$"}}},
        "else": {"properties": {"zip": {"type": "string"}}},
        "dependentRequired": {"vat": ["country"]},
        "unevaluatedProperties": False,
    }
    assert schema_check(schema, {"country": "FR", "postcode": "75001"}).passed
    assert "does not match" in schema_check(schema, {"country": "FR", "postcode": "7500"}).detail
    assert "Unevaluated properties are not allowed ('postcode' was unexpected)" in (
        schema_check(schema, {"country": "US", "postcode": "1"}).detail
    )
    assert "'country' is a dependency of 'vat'" in schema_check(schema, {"vat": "x"}).detail


def test_contains_not_property_names_and_pattern_properties() -> None:
    schema = {
        "type": "object",
        "propertyNames": {"maxLength": 5},
        "patternProperties": {"^n_": {"type": "integer"}},
        "additionalProperties": {"not": {"type": "null"}},
        "properties": {"list": {"contains": {"const": 3}, "minContains": 2}},
    }
    assert schema_check(schema, {"n_a": 1, "list": [3, 1, 3], "x": "y"}).passed
    assert "$.n_a: 'one' is not of type 'integer'" in schema_check(schema, {"n_a": "one"}).detail
    assert "should not be valid under" in schema_check(schema, {"x": None}).detail
    assert "too long" in schema_check(schema, {"longname": 1}).detail
    assert not schema_check(schema, {"list": [3, 1]}).passed


def test_unique_items_follows_json_equality() -> None:
    unique = {"uniqueItems": True}
    assert not schema_check(unique, [1, 1.0]).passed  # one number
    assert schema_check(unique, [1, True, 0, False, None]).passed  # booleans are not numbers
    assert not schema_check(unique, [{"a": 1, "b": [2]}, {"b": [2], "a": 1}]).passed  # key order is no matter
    assert schema_check(unique, [[1, 2], [2, 1], {"a": 1}, {"a": "1"}]).passed
    assert "has non-unique elements" in schema_check(unique, ["x", "x"]).detail


def test_a_schema_names_its_draft() -> None:
    draft7 = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "items": [{"type": "string"}],
        "additionalItems": False,
    }
    assert schema_check(draft7, ["a"]).passed
    assert not schema_check(draft7, ["a", "b"]).passed
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "maximum": 1, "exclusiveMaximum": True}
    assert not schema_check(draft4, 1).passed and schema_check(draft4, 0.5).passed
    # Without `$schema`, 2020-12: `items` is one schema for every item, `prefixItems` the tuple form.
    assert not schema_check({"prefixItems": [{"type": "string"}], "items": False}, ["a", "b"]).passed


def test_format_is_an_annotation_as_the_drafts_default() -> None:
    assert schema_check({"type": "string", "format": "email"}, "not an email").passed


# ---- schemas that cannot be applied: a failed component, never an exception ------------------


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"$ref": "https://example.com/schema.json"}, "a $ref cannot be resolved inside the schema"),
        ({"$ref": "#/$defs/missing"}, "a $ref cannot be resolved inside the schema"),
        ({"$ref": "#"}, "references never end"),
        (
            {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
            "references never end",
        ),
    ],
)
def test_a_schema_that_cannot_be_applied_is_a_failed_component(schema: dict[str, Any], reason: str) -> None:
    out = schema_check(schema, {"a": 1})
    assert not out.passed and out.score == 0 and out.verdict is None
    assert out.detail.startswith("the schema cannot be used: ") and reason in out.detail


@pytest.mark.parametrize(
    ("schema", "reason"),
    [
        ({"type": "float"}, "invalid schema: $.type: 'float' is not valid under any of the given schemas"),
        ({"$schema": "https://example.com/mine"}, "is not a JSON Schema draft the scorer knows"),
    ],
)
def test_an_invalid_schema_that_reaches_the_scorer_is_a_failed_component(schema: dict[str, Any], reason: str) -> None:
    # Refused when a suite loads; an event built without validation (an old producer) still scores.
    ref = JsonSchema.model_construct(schema_=schema, allow_fence=False, weight=1.0, name=None)
    out = check(ref, "{}")
    assert not out.passed and reason in out.detail


# ---- time and size bounds ---------------------------------------------------------------------


def test_an_exponential_schema_times_out() -> None:
    # Each level tries both branches of the next: 2^30 paths, all failing at the leaf.
    defs = {f"l{i}": {"anyOf": [{"$ref": f"#/$defs/l{i + 1}"}, {"$ref": f"#/$defs/l{i + 1}"}]} for i in range(30)}
    defs["l30"] = {"type": "string"}
    started = time.monotonic()
    out = schema_check({"$defs": defs, "$ref": "#/$defs/l0"}, 1, timeout_s=0.3)
    assert out.verdict == "timeout" and not out.passed
    assert "did not finish within the 0.3s limit" in out.detail
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "schema",
    [
        {"patternProperties": {BACKTRACKING: {}}},
        {"patternProperties": {BACKTRACKING: {}}, "additionalProperties": False},
        {"patternProperties": {BACKTRACKING: {}}, "unevaluatedProperties": False},
        {"propertyNames": {"pattern": BACKTRACKING}},
    ],
)
def test_property_name_patterns_that_backtrack_time_out_with_the_gil_released(schema: dict[str, Any]) -> None:
    ticks = 0
    stop = threading.Event()

    def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.01)

    thread = threading.Thread(target=ticker)
    thread.start()
    started = time.monotonic()
    try:
        out = schema_check(schema, {SLOW_KEY: 1}, timeout_s=0.3)
    finally:
        stop.set()
        thread.join()
    assert out.verdict == "timeout", out.detail
    assert time.monotonic() - started < 5
    assert ticks >= 5  # another thread ran meanwhile: the match released the GIL


def test_unique_items_is_linear_in_the_answer() -> None:
    def fastest(n: int) -> float:
        items = [{"id": i, "tags": [str(i)]} for i in range(n)]
        times = []
        for _ in range(3):
            started = time.perf_counter()
            assert schema_check({"uniqueItems": True}, items, timeout_s=30).passed
            times.append(time.perf_counter() - started)
        return min(times)

    # 8x the items: 8-40x the time when linear (caches, a loaded machine), 64x when pairwise.
    assert fastest(16_000) < 48 * fastest(2_000)


def test_patterns_outside_a_validation_use_the_stdlib_unchanged() -> None:
    import jsonschema

    # The stand-in `re` only bounds validations the scorer runs; other callers see the library as is.
    jsonschema.validate({"a": 1}, {"patternProperties": {"^a$": {"type": "integer"}}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": "x"}, {"patternProperties": {"^a$": {"type": "integer"}}})
