"""Arbitrary and adversarial input at the recorder's parse step and its query models: a parse
either yields an event that fits the database or raises ValueError (a dead letter); a request
either validates or gives a bounded 400 text. Nothing else escapes."""

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import subjects
from contracts.base import Event
from contracts.events import EVENT_TYPES, PromptEvent, PromptScored
from contracts.queries import BatchRef, HistoryQuery, ResumeRequest, SamplesQuery
from contracts.text import storable_json
from services.recorder import checks
from services.recorder.api import MAX_ERROR_CHARS, _clip, _problems
from services.recorder.parsing import parse_event
from services.runtime.messaging.handling import Incoming
from tests.factories import BatchEvents


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


KEYS = sorted(EVENT_TYPES)
texts = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(["\x00", "=", ".", "\n"]), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # (the stdlib writes integers of any size)


def _mutated(base: dict[str, Any], key: str, value: Any) -> bytes:
    return _dumps(base | {key: value})


@st.composite
def messages(draw: st.DrawFn) -> Incoming:
    batch = draw(st.sampled_from(["b-1", "b-2"]))
    entity, verb = draw(st.sampled_from(KEYS))
    subject = subjects.batch_event(batch, entity, verb)
    base = orjson.loads(_scored(draw(st.sampled_from(["b-1", "b-2"])), draw(st.integers(0, 3))).to_json())
    kind = draw(st.integers(0, 2))
    if kind == 0:
        data = draw(st.binary(max_size=200))
    elif kind == 1:
        data = _mutated(base, draw(st.sampled_from([*base, "stage", "usage"])), draw(json_values))
    else:
        data = _dumps(draw(json_values))
    return Incoming(subject, data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_parse_event_yields_a_storable_event_or_a_value_error(msg: Incoming) -> None:
    try:
        evt = parse_event(msg)
    except ValueError:
        return
    if evt is None:
        return
    assert isinstance(evt, Event) and msg.subject == evt.subject
    storable_json(evt.model_dump(mode="json"))  # raises if anything could not be stored
    if isinstance(evt, PromptEvent):
        assert checks.wrong_prompt_id(evt) is None


@pytest.mark.parametrize("model", [BatchRef, SamplesQuery, HistoryQuery, ResumeRequest])
@settings(max_examples=150, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["batch_id", "filters", "after_index", "token", "model"]), json_values))
def test_a_query_validates_or_gives_a_bounded_error(model: type, body: dict[str, Any]) -> None:
    try:
        model.model_validate_json(_dumps(body))
    except ValidationError as exc:
        text = _clip(f"bad {model.__name__}: {_problems(exc)}")
        assert len(text) <= MAX_ERROR_CHARS and "\n" not in text and "\x00" not in text
