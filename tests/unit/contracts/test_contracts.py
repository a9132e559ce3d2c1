import json

import pytest
from pydantic import ValidationError

from contracts import ids, subjects
from contracts.events import EVENT_TYPES, PromptQueued
from contracts.inputs import BatchConfig, Case, ChatMessage, StartBatchRequested, SuiteRef


def test_prompt_ids_and_event_ids_are_deterministic() -> None:
    assert ids.prompt_id("b-1", 7) == "b-1-000007"
    a = PromptQueued(batch_id="b-1", prompt_id="b-1-000007", index=7, messages=[], config=BatchConfig(model="m"))
    b = PromptQueued(batch_id="b-1", prompt_id="b-1-000007", index=7, messages=[], config=BatchConfig(model="x"))
    assert a.event_id == b.event_id  # same step of the same prompt: same id, whatever the payload
    other = PromptQueued(batch_id="b-1", prompt_id="b-1-000008", index=8, messages=[], config=BatchConfig(model="m"))
    assert other.event_id != a.event_id


def test_event_round_trips_as_json_with_its_id() -> None:
    evt = PromptQueued(
        batch_id="b-2",
        prompt_id="b-2-000000",
        index=0,
        messages=[ChatMessage(role="user", content="hi")],
        config=BatchConfig(model="m"),
    )
    back = PromptQueued.model_validate_json(evt.model_dump_json())
    assert back == evt
    assert back.subject == "evalbus.v1.batch.b-2.prompt.queued"


def test_wire_form_leaves_config_defaults_out_and_reads_back_equal() -> None:
    from contracts.quality import QualityConfig
    from contracts.references import Contains

    config = BatchConfig(
        model="m",
        criteria=["accuracy"],
        thresholds={"accuracy": 8},
        references=[Contains(value="x")],
        quality=QualityConfig(poor_flags=2),
        concurrency=64,
    )
    evt = PromptQueued(batch_id="b-2", prompt_id="b-2-000000", index=0, messages=[], config=config)
    wire = json.loads(evt.to_json())
    assert set(wire["config"]) == {"model", "criteria", "thresholds", "references", "quality", "concurrency"}
    assert wire["schema_version"] == 1 and wire["metadata"] == {}  # the envelope stays whole
    assert PromptQueued.model_validate_json(evt.to_json()) == evt
    plain = PromptQueued(batch_id="b-2", prompt_id="b-2-000001", index=1, messages=[], config=BatchConfig(model="m"))
    assert json.loads(plain.to_json())["config"] == {"model": "m"}
    assert PromptQueued.model_validate_json(plain.to_json()) == plain


def test_unknown_fields_are_ignored_and_unknown_versions_rejected() -> None:
    start = StartBatchRequested(batch_id="b-3", config=BatchConfig(model="m"), suite=SuiteRef(builtin="x"))
    data = start.model_dump(mode="json") | {"added_later": 1}
    assert StartBatchRequested.model_validate(data) == start
    with pytest.raises(ValidationError, match="schema_version"):
        StartBatchRequested.model_validate(data | {"schema_version": 2})


@pytest.mark.parametrize("bad", ["has.dot", "has space", "", "x" * 65, "star*", "ok\n", "tab\t"])
def test_batch_ids_must_be_one_subject_token(bad: str) -> None:
    assert not ids.is_valid_batch_id(bad)
    with pytest.raises(ValidationError):
        StartBatchRequested(batch_id=bad, config=BatchConfig(model="m"), suite=SuiteRef(builtin="x"))


def test_case_needs_exactly_one_input() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        Case()
    with pytest.raises(ValidationError, match="exactly one"):
        Case(prompt="a", messages=[ChatMessage(role="user", content="b")])
    with pytest.raises(ValidationError, match="user message"):
        Case(messages=[ChatMessage(role="system", content="b")])


def test_case_chat_prepends_the_batch_system_prompt_once() -> None:
    assert [m.role for m in Case(prompt="q").chat("be nice")] == ["system", "user"]
    chat = Case(messages=[ChatMessage(role="system", content="own"), ChatMessage(role="user", content="q")])
    assert [m.content for m in chat.chat("be nice")] == ["own", "q"]


def test_batch_config_validates_criteria_and_thresholds() -> None:
    cfg = BatchConfig(model="m", criteria=["accuracy", "tone"], thresholds={"tone": 5})
    assert cfg.threshold("tone") == 5 and cfg.threshold("accuracy") == 7
    with pytest.raises(ValidationError, match="unknown criterion"):
        BatchConfig(model="m", criteria=["accuracy"], thresholds={"tone": 5})
    with pytest.raises(ValidationError, match="between 1 and 10"):
        BatchConfig(model="m", criteria=["accuracy"], thresholds={"accuracy": 11})
    with pytest.raises(ValidationError, match="unique"):
        BatchConfig(model="m", criteria=["accuracy", "accuracy"])
    with pytest.raises(ValidationError):
        BatchConfig(model="m", criteria=["Bad Name"])
    with pytest.raises(ValidationError):
        BatchConfig(model="m", concurrency=0)


def test_suite_ref_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError):
        SuiteRef()
    with pytest.raises(ValidationError):
        SuiteRef(path="a.jsonl", builtin="b")
    assert SuiteRef(path="/x/y/suite.jsonl").display_name == "suite.jsonl"


def test_subject_catalogue() -> None:
    assert subjects.start_requested("b-9") == "evalbus.v1.batch.b-9.start.requested"
    assert subjects.any_batch("prompt", "queued") == "evalbus.v1.batch.*.prompt.queued"
    assert subjects.progress("b-9") == "evalbus.v1.progress.b-9"
    assert subjects.batch_id_of("evalbus.v1.batch.b-9.prompt.scored") == "b-9"
    assert subjects.batch_id_of("evalbus.v1.progress.b-9") is None
    assert ("prompt", "scored") in EVENT_TYPES


def test_presets_follow_batch_scoring_practice() -> None:
    from contracts.presets import PRESETS

    default = PRESETS["default"]
    assert (default.concurrency, default.max_retries, default.retry_base_s, default.timeout_s) == (3, 2, 5.0, 120.0)
    assert PRESETS["conservative"].concurrency < default.concurrency < PRESETS["aggressive"].concurrency
    cfg = BatchConfig(model="m")
    assert (cfg.concurrency, cfg.max_retries, cfg.timeout_s) == (3, 2, 120.0)
