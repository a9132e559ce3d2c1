"""Reference checks: parsing from suite JSON, each pure scorer on its edge cases, and combining."""

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.references import (
    REFERENCES,
    ComponentScore,
    Contains,
    ExactMatch,
    JsonSchema,
    JsonValid,
    NormalizedMatch,
    NumericTolerance,
    Reference,
    Regex,
    SqlEquivalence,
    parse_references,
)
from services.scorer.references import check, combine, extract_fenced, extract_number, normalize_text

# ---- parsing ---------------------------------------------------------------------------------


def test_a_suite_line_parses_into_one_model_per_kind() -> None:
    raw = """[
        {"kind": "exact", "value": "Paris"},
        {"kind": "normalized", "value": "paris", "weight": 2},
        {"kind": "contains", "value": "Paris", "case_sensitive": true},
        {"kind": "regex", "pattern": "^paris$", "flags": ["IGNORECASE"], "name": "capital"},
        {"kind": "json_valid", "require_object": true},
        {"kind": "json_schema", "schema": {"type": "object", "required": ["a"]}},
        {"kind": "numeric", "value": 3.5, "abs_tol": 0.1},
        {"kind": "sql", "expected_sql": "SELECT 1", "database": "shop", "timeout_s": 2}
    ]"""
    refs = REFERENCES.validate_json(raw)
    kinds = [type(r) for r in refs]
    assert kinds == [
        ExactMatch,
        NormalizedMatch,
        Contains,
        Regex,
        JsonValid,
        JsonSchema,
        NumericTolerance,
        SqlEquivalence,
    ]
    assert refs[1].weight == 2 and refs[3].label == "capital" and refs[0].label == "exact"
    schema_ref = refs[5]
    assert isinstance(schema_ref, JsonSchema) and schema_ref.schema_ == {"type": "object", "required": ["a"]}
    sql = refs[7]
    assert isinstance(sql, SqlEquivalence) and sql.ordered is None and sql.max_rows == 10_000
    assert REFERENCES.validate_json(REFERENCES.dump_json(refs)) == refs  # "schema" survives the round trip


@pytest.mark.parametrize(
    "raw",
    [
        {"kind": "levenshtein", "value": "x"},  # unknown kind
        {"value": "x"},  # no kind
        {"kind": "exact", "value": "x", "vaule": "typo"},  # extra fields are typos
        {"kind": "exact", "value": "x", "weight": -1},
        {"kind": "exact", "value": "x", "weight": math.inf},
        {"kind": "contains", "value": ""},  # would match everything
        {"kind": "regex", "pattern": "([a-z"},  # does not compile
        {"kind": "regex", "pattern": "a", "flags": ["UNICODE_PLEASE"]},
        {"kind": "numeric", "value": math.nan},
        {"kind": "numeric", "value": 1, "abs_tol": -0.1},
        {"kind": "sql", "expected_sql": "SELECT 1", "database": "postgresql://u:secret@db/x"},  # a name, not a URL
        {"kind": "sql", "expected_sql": "SELECT 1", "database": "shop", "timeout_s": 0},
        {"kind": "sql", "expected_sql": "", "database": "shop"},
        {"kind": "json_schema", "schema": {"type": "float"}},  # invalid under its draft's metaschema
        {"kind": "json_schema", "schema": {"$schema": "https://example.com/my-draft", "type": "object"}},
        {"kind": "json_schema", "schema": {"$schema": "http://json-schema.org/draft-07/schema#", "minLength": -1}},
        {"kind": "json_schema", "schema": {"patternProperties": {"(": {}}}},
        {"kind": "json_schema", "schema": {"properties": {"a": {"type": "string", "pattern": "("}}}},
        {"kind": "json_schema", "schema": {"required": "a"}},
    ],
)
def test_invalid_checks_are_refused_when_the_suite_loads(raw: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        parse_references([raw])


def test_invalid_regex_says_why() -> None:
    with pytest.raises(ValidationError, match="pattern does not compile"):
        Regex(pattern="(?P<x>a")


def test_frozen() -> None:
    ref = ExactMatch(value="a")
    with pytest.raises(ValidationError):
        ref.value = "b"  # type: ignore[misc]


def test_component_score_bounds() -> None:
    with pytest.raises(ValidationError):
        ComponentScore(name="n", kind="exact", score=1.5, passed=True, weight=1, detail="")
    with pytest.raises(ValidationError):
        ComponentScore(name="n", kind="sql", score=0, passed=False, weight=1, detail="", verdict="maybe")  # type: ignore[arg-type]


def test_sql_checks_are_not_scored_synchronously() -> None:
    with pytest.raises(ValueError, match=r"services\.scorer\.sql"):
        check(SqlEquivalence(expected_sql="SELECT 1", database="shop"), "SELECT 1")


# ---- exact, normalized, contains, regex --------------------------------------------------------


def test_exact_is_exact() -> None:
    ref = ExactMatch(value="Paris")
    assert check(ref, "Paris").passed
    out = check(ref, "Paris\n")
    assert not out.passed and out.score == 0 and "differs at character 5" in out.detail
    assert not check(ref, "paris").passed
    assert check(ExactMatch(value=""), "").passed
    # Composed and decomposed "é" look alike but are different strings.
    assert not check(ExactMatch(value="caf\u00e9"), "cafe\u0301").passed


@pytest.mark.parametrize(
    ("answer", "value"),
    [
        ("  Paris. ", "paris"),
        ('"Paris"', "Paris"),
        ("\u201cParis.\u201d", "paris"),
        ("'Paris'!", "PARIS"),
        ("\u00abNew   York\u00bb", "new york"),
        ("New\tYork\n", "new york"),
        ("Stra\u00dfe", "STRASSE"),  # casefold, not lower
        ("cafe\u0301", "CAF\u00c9"),  # NFKC composes
        ("\uff30\uff41\uff52\uff49\uff53", "paris"),  # full-width letters
        ("Paris\u200b", "Paris"),  # zero-width space
        ("Tokyo\u3002", "tokyo"),
        ("", ""),
        ("...", ""),
    ],
)
def test_normalized_matches(answer: str, value: str) -> None:
    assert check(NormalizedMatch(value=value), answer).passed


@pytest.mark.parametrize(
    ("answer", "value"),
    [("Paris, France", "paris"), ("", "paris"), ("Par is", "paris"), ("f(x)", "f(x"), ("don't", "dont")],
)
def test_normalized_differs(answer: str, value: str) -> None:
    out = check(NormalizedMatch(value=value), answer)
    assert not out.passed and "!=" in out.detail


def test_normalisation_keeps_inner_punctuation() -> None:
    assert normalize_text('  "U.S.A."  ') == "u.s.a"
    assert normalize_text("'It's fine.'") == "it's fine"
    assert normalize_text('"\'"') == "'"  # a lone quote is not a pair


@given(st.text())
def test_normalisation_is_idempotent(text: str) -> None:
    once = normalize_text(text)
    assert normalize_text(once) == once


def test_contains() -> None:
    assert check(Contains(value="REFUND"), "We issued a refund today").passed
    assert check(Contains(value="STRASSE"), "Hauptstra\u00dfe 5").passed
    assert not check(Contains(value="REFUND", case_sensitive=True), "a refund").passed
    out = check(Contains(value="refund"), "")
    assert not out.passed and "not found (ignoring case)" in out.detail
    assert check(Contains(value="\U0001f600"), "ok \U0001f600!").passed


def test_regex_modes_and_flags() -> None:
    assert check(Regex(pattern=r"\border\s+VL-\d+"), "Your order VL-48213 ships").passed
    assert not check(Regex(pattern=r"VL-\d+", mode="fullmatch"), "order VL-1").passed
    assert check(Regex(pattern=r"VL-\d+", mode="fullmatch"), "VL-1").passed
    assert not check(Regex(pattern="yes"), "YES").passed
    assert check(Regex(pattern="yes", flags=["IGNORECASE"]), "YES").passed
    assert not check(Regex(pattern="a.b"), "a\nb").passed
    assert check(Regex(pattern="a.b", flags=["DOTALL"]), "a\nb").passed
    assert check(Regex(pattern="^b$", flags=["MULTILINE"]), "a\nb\nc").passed
    assert check(Regex(pattern=r"^\w+$", mode="fullmatch"), "\u00e9t\u00e9").passed
    assert check(Regex(pattern="^$"), "").passed
    out = check(Regex(pattern="x+"), "abc")
    assert not out.passed and out.detail == "no search for /x+/"


# ---- numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "number"),
    [
        ("42", 42.0),
        ("  -3.5 ", -3.5),
        ("1,234.5 kg", 1234.5),
        ("$1,000,000", 1e6),
        ("about 42.", 42.0),
        ("-0.5\u00b0C", -0.5),
        ("\u22127", -7.0),  # the Unicode minus sign
        ("x = -12", -12.0),
        ("1.5e3 rows", 1500.0),
        (".5", 0.5),
        ("+8", 8.0),
        ("The answer is 3, not 4", 3.0),
        ("v2 has 3 parts", 3.0),  # a digit inside a word is not a number
        ("12,34", 12.0),  # not thousands: groups of three only
        ("\u0663", 3.0),  # Arabic-Indic digit three
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(answer: str, number: float | None) -> None:
    assert extract_number(answer) == number


def test_extract_number_whole_answer_non_finite() -> None:
    assert math.isnan(extract_number(" NaN ") or 0)
    assert extract_number("-inf") == -math.inf
    assert extract_number("nan is not 5") == 5.0  # only the whole answer may be NaN


def test_numeric_tolerances() -> None:
    assert check(NumericTolerance(value=1234.5), "It weighs 1,234.5 kg.").passed
    assert not check(NumericTolerance(value=1234.5), "It weighs 1,234.6 kg.").passed
    assert check(NumericTolerance(value=1234.5, abs_tol=0.2), "1,234.6").passed
    assert check(NumericTolerance(value=100, rel_tol=0.01), "100.9").passed
    assert not check(NumericTolerance(value=100, rel_tol=0.01), "102").passed
    assert check(NumericTolerance(value=-7), "\u22127").passed
    assert check(NumericTolerance(value=0.1 + 0.2), "0.3").passed  # default rel_tol absorbs float noise
    assert check(NumericTolerance(value=0, abs_tol=1e-12), "-0").passed


@pytest.mark.parametrize(("answer", "why"), [("NaN", "not a finite number"), ("", "no number"), ("ten", "no number")])
def test_numeric_failures_say_why(answer: str, why: str) -> None:
    out = check(NumericTolerance(value=10), answer)
    assert not out.passed and why in out.detail


# ---- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "ok", "detail"),
    [
        ('{"a": 1}', True, "valid JSON object"),
        ("[1, 2]", True, "valid JSON array"),
        ('"just a string"', True, "valid JSON string"),
        ("null", True, "valid JSON null"),
        ('  {"\u00e9": "\U0001f600"}\n', True, "valid JSON object"),
        ('Here it is:\n```json\n{"a": 1}\n```\nDone.', True, "valid JSON object"),
        ("", False, "empty answer"),
        ("   ", False, "empty answer"),
        ('{"a": 1,}', False, "invalid JSON"),
        ("{'a': 1}", False, "invalid JSON"),
        ("NaN", False, "invalid JSON"),
        ('{"a": Infinity}', False, "invalid JSON"),
        ('{"a": 1} trailing', False, "invalid JSON"),
        ("[" * 100_000 + "]" * 100_000, False, "invalid JSON"),  # deeper than the parser goes
    ],
)
def test_json_valid(answer: str, ok: bool, detail: str) -> None:
    out = check(JsonValid(), answer)
    assert out.passed is ok and detail in out.detail


def test_json_valid_but_not_an_object() -> None:
    out = check(JsonValid(require_object=True), "[1, 2, 3]")
    assert not out.passed and out.detail == "valid JSON, but array, not an object"
    assert check(JsonValid(require_object=True), '{"a": []}').passed


def test_fence_only_when_allowed() -> None:
    fenced = '```json\n{"a": 1}\n```'
    assert check(JsonValid(), fenced).passed
    assert not check(JsonValid(allow_fence=False), fenced).passed
    assert check(JsonValid(), '```\n{"a": 1}\n```').passed  # an untagged fence that is the whole answer
    assert extract_fenced("```python\nx = 1\n```", ["json"]) is None


PERSON = {
    "type": "object",
    "required": ["name", "age"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "role": {"enum": ["admin", "user"]},
        "score": {"type": ["number", "null"], "exclusiveMaximum": 1},
    },
}


def test_json_schema_accepts_a_matching_document() -> None:
    ok = '{"name": "\u00c9milie", "age": 30.0, "tags": ["a"], "role": "user", "score": null}'
    out = check(JsonSchema.model_validate({"schema": PERSON}), ok)
    assert out.passed and out.detail == "matches the schema"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("[1, 2]", "$: [1, 2] is not of type 'object'"),
        ('"text"', "$: 'text' is not of type 'object'"),
        ('{"name": "a"}', "$: 'age' is a required property"),
        ('{"name": "a", "age": "30"}', "$.age: '30' is not of type 'integer'"),
        ('{"name": "a", "age": 30.5}', "$.age: 30.5 is not of type 'integer'"),
        ('{"name": "a", "age": true}', "$.age: True is not of type 'integer'"),
        ('{"name": "a", "age": -1}', "$.age: -1 is less than the minimum of 0"),
        ('{"name": "", "age": 1}', "$.name: '' should be non-empty"),
        ('{"name": "a", "age": 1, "nick": "x"}', "$: Additional properties are not allowed ('nick' was unexpected)"),
        ('{"name": "a", "age": 1, "tags": ["x", 2]}', "$.tags[1]: 2 is not of type 'string'"),
        ('{"name": "a", "age": 1, "tags": ["1", "2", "3", "4"]}', "$.tags: ['1', '2', '3', '4'] is too long"),
        ('{"name": "a", "age": 1, "role": "root"}', "$.role: 'root' is not one of ['admin', 'user']"),
        ('{"name": "a", "age": 1, "score": 1}', "$.score: 1 is greater than or equal to the maximum of 1"),
        ("{", "invalid JSON"),
    ],
)
def test_json_schema_mismatch_reasons(answer: str, reason: str) -> None:
    out = check(JsonSchema.model_validate({"schema": PERSON}), answer)
    assert not out.passed and reason in out.detail


def test_json_schema_reports_the_first_five_problems_and_counts_the_rest() -> None:
    out = check(JsonSchema.model_validate({"schema": PERSON}), '{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}')
    assert out.detail.startswith("schema mismatch: $: 'name' is a required property; ")
    assert "('a', 'b', 'c', 'd', 'e', 'f' were unexpected)" in out.detail
    many = JsonSchema.model_validate({"schema": {"items": {"type": "string"}}})
    assert check(many, json.dumps(list(range(8)))).detail.endswith("$[4]: 4 is not of type 'string' (+3 more)")
    # Past 50 problems the scorer stops looking: the count is a lower bound.
    assert check(many, json.dumps(list(range(1000)))).detail.endswith("(+46 or more)")


def test_json_schema_booleans_are_not_numbers_and_const() -> None:
    ref = JsonSchema.model_validate({"schema": {"type": "array", "items": {"const": 1}}})
    assert check(ref, "[1, 1.0]").passed
    assert "$[0]: 1 was expected" in check(ref, "[true]").detail
    nested = JsonSchema.model_validate(
        {"schema": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[A-Z]"}}}
    )
    assert check(nested, '{"x": "Abc"}').passed
    assert "$.y: 'abc' does not match '^[A-Z]'" in check(nested, '{"y": "abc"}').detail


# ---- combining -------------------------------------------------------------------------------


def component(score: float, weight: float = 1.0, verdict: str | None = None) -> ComponentScore:
    return ComponentScore.model_validate(
        {
            "name": "c",
            "kind": "x",
            "score": score,
            "passed": score == 1,
            "weight": weight,
            "detail": "",
            "verdict": verdict,
        }
    )


def test_combine_weighted_mean() -> None:
    assert combine([component(1, 3), component(0, 1)], 0.75) == (0.75, True)
    assert combine([component(1, 3), component(0, 1)], 0.8) == (0.75, False)
    assert combine([component(0.7), component(0.7), component(0.7)], 0.7) == (0.7, True)


def test_zero_weight_reports_but_does_not_count() -> None:
    assert combine([component(1), component(0, 0)], 1.0) == (1.0, True)
    assert combine([component(0, 0, "write_attempt"), component(1)], 1.0) == (1.0, True)
    assert combine([component(0, 0)], 0.5) == (1.0, True)
    assert combine([], 0.5) == (1.0, True)


@pytest.mark.parametrize("verdict", ["invalid_sql", "write_attempt"])
def test_hard_failures_fail_the_case_whatever_the_mean(verdict: str) -> None:
    score, passed = combine([component(1, 10), component(1, 10), component(0, 0.1, verdict)], 0.5)
    assert score > 0.99 and not passed


def test_soft_sql_failures_only_lower_the_mean() -> None:
    assert combine([component(1, 9), component(0, 1, "timeout")], 0.9) == (0.9, True)


def test_combine_threshold_bounds() -> None:
    with pytest.raises(ValueError, match="pass_threshold"):
        combine([component(1)], 1.5)


# ---- every kind, any answer --------------------------------------------------------------------

PURE: list[Reference] = [
    ExactMatch(value="x"),
    NormalizedMatch(value="x"),
    Contains(value="x"),
    Regex(pattern=r"\d+"),
    JsonValid(),
    JsonSchema.model_validate({"schema": {"type": "object"}}),
    NumericTolerance(value=1),
]


@given(st.text(max_size=200))
def test_no_answer_breaks_a_check(answer: str) -> None:
    for ref in PURE:
        out = check(ref, answer)
        assert out.score in (0.0, 1.0) and out.passed is (out.score == 1.0)
        assert out.kind == ref.kind and out.weight == ref.weight and out.verdict is None
