"""Validation at the edge: every string of every event refuses NUL, every field has a bound, and
derived fields respect the bound of the field they fill."""

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from contracts import ids
from contracts.base import Event
from contracts.bounds import MAX_ANSWER, MAX_NAME
from contracts.events import EVENT_TYPES, BatchAccepted, PromptQueued
from contracts.inputs import BatchConfig, Case, StartBatchRequested, SuiteRef
from contracts.ops import DeadLetter
from contracts.references import MAX_REFERENCES, parse_references
from contracts.text import storable, storable_text
from services.generator.logic import plan_batch, with_defaults
from tests.factories import SAMPLES

# Owned by other parts of issue 12 (suite sources, endpoint URLs): checked there.
NOT_HERE = {("suite", "name"), ("suite", "path"), ("suite", "builtin"), ("config", "base_url")}


def string_leaves(tree: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(tree, str):
        yield path
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from string_leaves(value, (*path, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from string_leaves(value, (*path, i))


def with_leaf(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    tree = json.loads(json.dumps(tree))
    node = tree
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return tree


def sample_paths() -> Iterator[tuple[type[Event], tuple[Any, ...]]]:
    for cls, evt in SAMPLES.items():
        for path in string_leaves(json.loads(evt.to_json())):
            if path[:2] not in NOT_HERE:
                yield cls, path


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES.values())


@pytest.mark.parametrize(("cls", "path"), list(sample_paths()), ids=lambda x: getattr(x, "__name__", None))
def test_every_string_of_every_event_refuses_nul(cls: type[Event], path: tuple[Any, ...]) -> None:
    wire = json.loads(SAMPLES[cls].to_json())
    leaf = wire
    for step in path:
        leaf = leaf[step]
    with pytest.raises(ValidationError):
        cls.model_validate_json(json.dumps(with_leaf(wire, path, leaf + "\x00")))


@pytest.mark.parametrize(
    ("cls", "path"),
    [
        (PromptQueued, ("metadata",)),
        (StartBatchRequested, ("suite", "cases", 0, "metadata")),
        (PromptQueued, ("references", 5, "schema", "properties")),
    ],
)
def test_keys_of_free_form_dicts_refuse_nul(cls: type[Event], path: tuple[Any, ...]) -> None:
    wire = json.loads(SAMPLES[cls].to_json())
    node = wire
    for step in path:
        node = node[step]
    bad = with_leaf(wire, path, {**node, "k\x00": "v"} if path[-1] != "properties" else {"a\x00": {}})
    with pytest.raises(ValidationError, match="NUL"):
        cls.model_validate_json(json.dumps(bad))


TOO_BIG = 2**31  # PostgreSQL integer
BOUNDS: list[tuple[str, tuple[Any, ...], Any]] = [
    ("PromptQueued", ("index",), TOO_BIG),
    ("PromptResponded", ("usage", "tokens_in"), TOO_BIG),
    ("PromptResponded", ("usage", "tokens_out"), -1),
    ("PromptResponded", ("usage", "attempts"), 2**15),  # smallint
    ("PromptResponded", ("usage", "latency_ms"), 1e400),  # JSON's way to say infinity
    ("PromptResponded", ("usage", "cost_usd"), 1e400),
    ("PromptResponded", ("answer",), "x" * (MAX_ANSWER + 1)),
    ("PromptResponded", ("model",), "m" * (MAX_NAME + 1)),
    ("PromptFailed", ("attempts",), 2**15),
    ("PromptFailed", ("error",), "e" * 4001),
    ("PromptJudged", ("calls", "share"), 1e400),
    ("PromptJudged", ("calls", "batch_size"), 2**15),
    ("PromptJudged", ("judgments", 0, "reasoning"), "r" * 20_001),
    ("PromptJudged", ("judgments", 0, "criterion"), "Not A Criterion"),
    ("PromptJudged", ("judgments", 0, "suggestions"), ["s"] * 21),
    ("PromptScored", ("overall_score",), 11),
    ("PromptScored", ("reasons",), ["r"] * 101),
    ("PromptQueued", ("metadata",), {f"k{i}": i for i in range(101)}),
    ("PromptQueued", ("metadata",), {"long": "x" * 100_001}),
    ("PromptQueued", ("metadata",), {"n": 1e400}),  # orjson would store null
    ("PromptQueued", ("metadata",), {"n": 10**30}),  # orjson refuses it: the recorder's insert would fail
    ("PromptQueued", ("references", 5, "schema", "enum"), [10**30]),
    ("PromptQueued", ("metadata",), {"deep": json.loads("[" * 40 + "]" * 40)}),
    ("PromptQueued", ("references",), [{"kind": "json_valid"}] * (3 * MAX_REFERENCES + 1)),
    ("PromptQueued", ("messages",), [{"role": "user", "content": "q"}] * 202),
    ("PromptQueued", ("config", "input_cost_per_mtok"), 1e400),
    ("PromptQueued", ("config", "thresholds"), {"accuracy": 1e400}),
    ("BatchAccepted", ("total_prompts",), TOO_BIG),
    ("BatchRejected", ("errors",), ["e"] * 51),
    ("BatchCompleted", ("report", "cost_usd"), 1e400),
    ("BatchCompleted", ("report", "tokens_in"), 2**63),
    ("PromptQueued", ("event_id",), "x\r\nNats-Msg-Id: forged"),
]


@pytest.mark.parametrize(("name", "path", "value"), BOUNDS, ids=[f"{n}.{'.'.join(map(str, p))}" for n, p, _ in BOUNDS])
def test_every_field_has_a_bound(name: str, path: tuple[Any, ...], value: Any) -> None:
    cls = next(c for c in SAMPLES if c.__name__ == name)
    wire = json.loads(SAMPLES[cls].to_json())
    with pytest.raises(ValidationError):
        cls.model_validate_json(json.dumps(with_leaf(wire, path, value)))


def test_floats_refuse_nan_where_a_value_is_stored_or_compared() -> None:
    wire = SAMPLES[PromptQueued].model_dump(mode="json")
    for path in (("config", "output_cost_per_mtok"), ("config", "default_threshold"), ("config", "judge_weight")):
        with pytest.raises(ValidationError):
            PromptQueued.model_validate(with_leaf(wire, path, math.nan))


def test_readers_still_ignore_unknown_fields() -> None:
    for cls, evt in SAMPLES.items():
        wire = json.loads(evt.to_json()) | {"added_later": {"x": [1, "\x00 is fine where nobody reads it"]}}
        assert cls.model_validate_json(json.dumps(wire)) == evt


# ---- dead letters keep what they are given, made storable -----------------------------------


def test_a_dead_letter_is_made_storable_not_refused() -> None:
    letter = DeadLetter(service="recorder", subject="s\x00", reason="r" * 5000, payload="a\x00b\ud800" * 30_000)
    for text in (letter.subject, letter.reason, letter.payload):
        assert storable(text) == text
    assert len(letter.reason) == 4000 and len(letter.payload) == 65_536 and letter.payload.startswith("a\ufffdb\ufffd")


def test_storable_text() -> None:
    assert storable_text("plain") == "plain"
    assert storable_text("a\x00b\udc80c", limit=4) == "a\ufffdb\ufffd"


# ---- defect 9: derived fields respect the bound of the field they fill ------------------------


@pytest.mark.parametrize("model", ["m" * 200, "x/" * 100, "-" * 200, "gpt-4o-mini", "\u00e9" * 150])
def test_the_default_session_tag_fits_the_field_it_fills(model: str) -> None:
    start = StartBatchRequested(
        batch_id="b-long",
        occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        config=BatchConfig(model=model),
        suite=SuiteRef(cases=[Case(prompt="q")]),
    )
    cfg = with_defaults(start)
    assert cfg.session_id is not None and len(cfg.session_id) <= MAX_NAME
    assert cfg.session_id.startswith("batch-") and cfg.session_id.endswith("-20260102T030405Z")
    plan = plan_batch(start)
    assert not hasattr(plan, "reason"), plan
    # What the chat-runner and the recorder read back is valid (it was dead-lettered before).
    accepted = BatchAccepted.model_validate_json(plan.accepted.to_json())  # type: ignore[union-attr]
    assert accepted.config.session_id == cfg.session_id
    for prompt in plan.prompts():  # type: ignore[union-attr]
        assert PromptQueued.model_validate_json(prompt.to_json()) == prompt
    assert with_defaults(start) == cfg  # a redelivery derives the same


def test_session_tag_keeps_the_stamp_and_bounds_the_whole() -> None:
    assert ids.session_tag("gpt-4o", "S") == "batch-gpt-4o-S"
    assert ids.session_tag("a b/c", "S") == "batch-a-b-c-S"
    tag = ids.session_tag("m" * 500, "20260102T030405Z", max_length=50)
    assert len(tag) == 50 and tag.endswith("-20260102T030405Z")
    assert ids.session_tag("m" * 500, "S" * 60, max_length=50) == ("batch-m-" + "S" * 60)[:50]
    assert ids.SESSION_TAG_MAX == MAX_NAME


def test_a_system_prompt_before_the_most_messages_a_case_may_have_still_fits() -> None:
    messages = [{"role": "user", "content": "q"}] * 200
    start = StartBatchRequested(
        batch_id="b-many",
        config=BatchConfig(model="m", system_prompt="be brief", references=parse_references([{"kind": "json_valid"}])),
        suite=SuiteRef(
            cases=[Case.model_validate({"messages": messages, "references": [{"kind": "exact", "value": "a"}]})]
        ),
    )
    plan = plan_batch(start)
    (prompt,) = list(plan.prompts())  # type: ignore[union-attr]
    assert len(prompt.messages) == 201 and len(prompt.references) == 2
    assert PromptQueued.model_validate_json(prompt.to_json()) == prompt


def test_a_suite_list_of_references_is_bounded() -> None:
    with pytest.raises(ValidationError, match="at most 20"):
        parse_references([{"kind": "json_valid"}] * (MAX_REFERENCES + 1))


def test_metadata_a_yaml_suite_gives_is_refused_unless_the_recorder_can_store_it() -> None:
    import datetime as dt

    assert Case.model_validate({"prompt": "q", "metadata": {"day": dt.date(2026, 1, 2)}}).metadata
    for bad in (b"bytes", {1, 2}, float("inf"), 10**30):
        with pytest.raises(ValidationError):
            Case.model_validate({"prompt": "q", "metadata": {"x": bad}})


def test_criteria_are_whole_names() -> None:
    with pytest.raises(ValidationError):
        BatchConfig(model="m", criteria=["accuracy\n"])


@pytest.mark.parametrize("when", ["2026-01-02T03:04:05", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59"])
def test_event_times_carry_a_zone_and_a_sane_year(when: str) -> None:
    wire = json.loads(SAMPLES[PromptQueued].to_json()) | {"occurred_at": when}
    with pytest.raises(ValidationError):
        PromptQueued.model_validate_json(json.dumps(wire))
