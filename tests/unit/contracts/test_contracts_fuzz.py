"""Property tests: whatever bytes arrive on a subject, parsing them as any event either refuses
them (ValidationError / ValueError) or yields an event whose every string PostgreSQL can store,
that serialises and reads back equal — never another exception. And whatever a valid judged
event holds, scoring it returns a verdict."""

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from contracts.base import Event
from contracts.events import EVENT_TYPES, PromptJudged
from contracts.references import compile_pattern, parse_references
from contracts.text import storable
from services.scorer.logic import score_prompt
from tests.factories import SAMPLES

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASSES = sorted(EVENT_TYPES.values(), key=lambda c: c.__name__)
RAW = "__raw__"  # stands in for JSON text that json.dumps cannot produce, spliced in afterwards

# JSON text an attacker can send (escapes decoded by the parser, numbers beyond every range,
# nesting beyond every parser's recursion, megabytes).
ADVERSARIAL_JSON = [
    '"\\u0000"',
    '"a\\u0000b"',
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\ud83d\\ude00"',  # a valid pair: one emoji
    "1" * 5000,
    "-" + "9" * 400,
    "18446744073709551616",
    "-9223372036854775809",
    "1e400",
    "-1e400",
    "NaN",
    "Infinity",
    "[" * 5000 + "]" * 5000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    '"' + "x" * 1_000_000 + '"',
    '"' + "\u00e9" * 300_000 + '"',
    '{"kind": "regex", "pattern": "' + "(" * 3000 + ")" * 3000 + '"}',
    '{"kind": "regex", "pattern": "(.|.)*\\u0001"}',
    '{"kind": "regex", "pattern": "(?:a{10000}){10000}"}',
    '{"kind": "json_schema", "schema": {"pattern": "' + "(" * 200 + ")" * 200 + '"}}',
    "[]",
    "{}",
    "null",
    "true",
    '""',
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
adversarial = st.sampled_from(ADVERSARIAL_JSON).map(lambda raw: (RAW, raw))
replacement = st.one_of(json_values, adversarial, adversarial)


def node_paths(tree: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from node_paths(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from node_paths(value, (*path, i))


def splice(tree: Any, path: tuple[Any, ...], value: Any, as_key: bool) -> str:
    """`tree` as JSON text with the node at `path` replaced by `value` (or `value` added as a key
    of that node), `(RAW, text)` values spliced in as raw JSON text."""
    raw = value[1] if isinstance(value, tuple) else None
    plain = RAW if raw is not None else value
    if not path and not as_key:
        return raw if raw is not None else json.dumps(plain)
    tree = json.loads(json.dumps(tree))
    node = tree
    for step in path[:-1] if not as_key else path:
        node = node[step]
    if as_key:
        key = plain if isinstance(plain, str) else json.dumps(plain)
        node[key] = 1
    else:
        node[path[-1]] = plain
    text = json.dumps(tree)
    return text if raw is None else text.replace(json.dumps(RAW), raw, 1)


@st.composite
def mutated_events(draw: st.DrawFn) -> tuple[type[Event], str]:
    cls = draw(st.sampled_from(CLASSES))
    wire = json.loads(SAMPLES[cls].to_json())
    paths = list(node_paths(wire))
    path = draw(st.sampled_from(paths))
    parent_is_dict = isinstance(_at(wire, path), dict)
    as_key = parent_is_dict and draw(st.booleans())
    value = draw(replacement)
    if as_key and isinstance(value, tuple):
        value = value[1]  # a key is a string: use the JSON text itself as one
    return cls, splice(wire, path, value, as_key)


def _at(tree: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        tree = tree[step]
    return tree


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, BaseModel):
        yield from strings(value.model_dump())
    elif isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from strings(item)


def assert_refused_or_storable(cls: type[Event], data: str | bytes) -> None:
    try:
        evt = cls.model_validate_json(data)
    except ValueError:  # ValidationError is one
        return
    for text in strings(evt):
        assert storable(text) == text
    assert cls.model_validate_json(evt.to_json()) == evt


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_sample_reads_back(cls: type[Event]) -> None:
    assert_refused_or_storable(cls, SAMPLES[cls].to_json())
    assert cls.model_validate_json(SAMPLES[cls].to_json()) == SAMPLES[cls]


@settings(FUZZ, max_examples=250)
@given(mutated_events())
def test_a_mutated_event_is_refused_or_storable(case: tuple[type[Event], str]) -> None:
    cls, data = case
    assert_refused_or_storable(cls, data)


@FUZZ
@given(st.sampled_from(CLASSES), json_values)
def test_arbitrary_json_is_refused_or_storable(cls: type[Event], value: Any) -> None:
    assert_refused_or_storable(cls, json.dumps(value))


@FUZZ
@given(st.sampled_from(CLASSES), st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_or_storable(cls: type[Event], data: bytes) -> None:
    assert_refused_or_storable(cls, data)


@pytest.mark.parametrize("raw", ADVERSARIAL_JSON, ids=range(len(ADVERSARIAL_JSON)))
def test_each_adversarial_value_at_the_top_and_in_every_field(raw: str) -> None:
    for cls in CLASSES:
        assert_refused_or_storable(cls, raw)
        wire = json.loads(SAMPLES[cls].to_json())
        for key in wire:
            assert_refused_or_storable(cls, splice(wire, (key,), (RAW, raw), as_key=False))


# ---- patterns and scoring ----------------------------------------------------------------------

pattern_text = st.text(alphabet="()[]{}*+?|.^$\\-,:=!<>Pa01\u0001 ", max_size=40)


@settings(max_examples=300, deadline=None)
@given(pattern_text)
def test_compiling_any_pattern_refuses_it_or_compiles_it(source: str) -> None:
    try:
        compiled = compile_pattern(source)
    except ValueError:
        return
    compiled.search("a0(", timeout=1.0)


answers = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["```json\n{}\n```", "```" * 2000, "[" * 3000, "1" * 5000, "1e999", "\u0001" + "a" * 3000]),
)
pattern_refs = pattern_text.map(lambda p: {"kind": "regex", "pattern": p})
other_refs = st.sampled_from(
    [
        {"kind": "exact", "value": "a"},
        {"kind": "normalized", "value": "A."},
        {"kind": "contains", "value": "a"},
        {"kind": "json_valid", "require_object": True},
        {"kind": "json_schema", "schema": {"type": "array", "items": {"type": "string", "pattern": "(a|a)*b"}}},
        {"kind": "json_schema", "schema": {"enum": [[1]], "const": {"a": [1]}}},
        {"kind": "numeric", "value": 1, "rel_tol": 0.5},
        {"kind": "sql", "expected_sql": "SELECT 1", "database": "none"},
    ]
)


@FUZZ
@given(answers, st.lists(st.one_of(pattern_refs, other_refs), max_size=6))
def test_scoring_a_valid_judged_event_always_gives_a_verdict(answer: str, refs: list[dict[str, Any]]) -> None:
    try:
        references = parse_references(refs)
    except ValidationError:
        return
    try:
        evt = SAMPLES[PromptJudged].model_copy(update={"answer": answer, "references": references})
        evt = PromptJudged.model_validate_json(evt.to_json())
    except ValidationError:
        return
    scored = asyncio.run(score_prompt(evt, pattern_timeout_s=0.05))
    assert len(scored.components) == len(references) + 1  # the judge, then each check
    assert all(c.verdict != "error" or c.kind == "sql" for c in scored.components)
