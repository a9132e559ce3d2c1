"""Every consumer's parse-and-handle entry under hostile payloads, with fakes for publishing and
acking: no exception escapes, every message is settled once, and one that is not worked on is
dead-lettered with a bounded reason. (The generator's `read_start` is fuzzed in
tests/unit/generator/test_hostile_starts.py.)"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from contracts.base import Event
from contracts.events import PromptJudged, PromptQueued, PromptResponded
from contracts.ops import DeadLetter
from contracts.text import storable
from services.recorder.dead_letters import prompt_failure
from services.recorder.parsing import parse_dead_letter, parse_event
from services.runtime.messaging.handling import Incoming, Parse, handle_batch, handle_one, typed
from tests.fakes import FakeJs, FakeMsg, policy_for
from tests.fuzz import payloads as p

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_REASON = 4000


@dataclass(frozen=True)
class Consumer:
    service: str
    valid: Event
    run: Callable[[FakeJs, list[FakeMsg], list[Any]], Awaitable[None]]


def _one(model: type[BaseModel]) -> Callable[[FakeJs, list[FakeMsg], list[Any]], Awaitable[None]]:
    async def run(js: FakeJs, raws: list[FakeMsg], worked: list[Any]) -> None:
        async def work(evt: Any) -> Event:
            worked.append(evt)
            return p.prompt_scored()  # any event: what is published is not under test

        policy = policy_for(js, typed(model), model.__name__)
        for raw in raws:
            await handle_one(policy, raw, work)  # type: ignore[arg-type]

    return run


def _batch(service: str, parse: Parse[Any]) -> Callable[[FakeJs, list[FakeMsg], list[Any]], Awaitable[None]]:
    async def run(js: FakeJs, raws: list[FakeMsg], worked: list[Any]) -> None:
        async def work(evts: list[Any]) -> Sequence[Event]:
            worked.extend(evts)
            return []

        policy = policy_for(js, parse, service)
        await handle_batch(policy, raws, work)  # type: ignore[arg-type]

    return run


CONSUMERS = [
    Consumer(PromptQueued.__name__, p.prompt_queued(), _one(PromptQueued)),  # chat-runner
    Consumer(PromptResponded.__name__, p.prompt_responded(), _one(PromptResponded)),  # judge
    Consumer("scorer", p.prompt_judged(), _batch("scorer", typed(PromptJudged))),
    Consumer("recorder", p.prompt_scored(), _batch("recorder", parse_event)),
]
IDS = ["chat-runner", "judge", "scorer", "recorder"]


def run_fetch(
    consumer: Consumer, bodies: list[bytes], subject: str | None = None
) -> tuple[FakeJs, list[FakeMsg], list[Any]]:
    js, worked = FakeJs(), []
    raws = [FakeMsg(subject or consumer.valid.subject, b, seq=i + 1) for i, b in enumerate(bodies)]
    asyncio.run(consumer.run(js, raws, worked))  # an exception escaping fails the example
    return js, raws, worked


def check_outcomes(consumer: Consumer, js: FakeJs, raws: list[FakeMsg], worked: list[Any]) -> None:
    assert all(r.settled == ["ack"] for r in raws), [r.settled for r in raws]
    letters = js.letters(consumer.service)
    assert len(worked) + len(letters) == len(raws)
    for letter in letters:
        assert letter.reason and len(letter.reason) <= MAX_REASON
        assert len(letter.payload) <= 65_536


@pytest.mark.parametrize("consumer", CONSUMERS, ids=IDS)
def test_any_payload_is_worked_on_or_dead_lettered_with_a_bounded_reason(consumer: Consumer) -> None:
    @FUZZ
    @given(body=p.hostile_bytes(consumer.valid))
    def one(body: bytes) -> None:
        check_outcomes(consumer, *run_fetch(consumer, [body]))

    one()


@pytest.mark.parametrize("consumer", CONSUMERS, ids=IDS)
def test_poison_in_a_fetch_leaves_the_valid_messages_worked_on(consumer: Consumer) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(poison=st.lists(p.hostile_bytes(consumer.valid), min_size=1, max_size=5), at=st.integers(0, 5))
    def one(poison: list[bytes], at: int) -> None:
        valid = consumer.valid.to_json()
        bodies = [valid, *poison]
        bodies.insert(min(at, len(bodies)), valid)
        js, raws, worked = run_fetch(consumer, bodies)
        check_outcomes(consumer, js, raws, worked)
        assert sum(1 for b in bodies if b == valid) <= len(worked)

    one()


@pytest.mark.parametrize("consumer", CONSUMERS, ids=IDS)
def test_what_is_worked_on_or_dead_lettered_can_be_stored(consumer: Consumer) -> None:
    """NUL escapes, and NUL bytes in a body that is not JSON, never reach PostgreSQL."""
    doc = p.samples_of(consumer.valid)
    text_field = next(k for k in ("answer", "error", "prompt_id") if k in doc)
    bodies = [
        orjson.dumps(doc)[:-1] + b',"' + text_field.encode() + b'":"a\\u0000b"}',
        b"\x00garbage\x00",
    ]
    js, raws, worked = run_fetch(consumer, bodies)
    check_outcomes(consumer, js, raws, worked)
    for evt in worked:
        storable(evt.model_dump_json())  # any NUL in a field shows as \u0000 in JSON, so check values
        for value in orjson.loads(evt.model_dump_json()).values():
            if isinstance(value, str):
                storable(value)
    for letter in js.letters(consumer.service):
        storable(letter.payload), storable(letter.reason), storable(letter.subject)


@pytest.mark.parametrize("consumer", CONSUMERS, ids=IDS)
def test_a_valid_event_on_another_batchs_subject_is_not_worked_on(consumer: Consumer) -> None:
    other = consumer.valid.subject.replace(f".{p.BATCH}.", ".b-other.")
    js, raws, worked = run_fetch(consumer, [consumer.valid.to_json()], subject=other)
    check_outcomes(consumer, js, raws, worked)
    assert worked == [] and len(js.letters(consumer.service)) == 1


@FUZZ
@given(body=p.hostile_bytes(p.prompt_scored()), verb=st.sampled_from(["scored", "failed", "judged", "nonsense"]))
def test_recorder_parse_event_raises_only_what_handling_dead_letters(body: bytes, verb: str) -> None:
    msg = Incoming(f"evalbus.v1.batch.{p.BATCH}.prompt.{verb}", body, stream_seq=1)
    with contextlib.suppress(ValidationError, ValueError):  # what handling dead-letters without a log line
        parse_event(msg)


@FUZZ
@given(payload=p.hostile_bytes(p.prompt_failed()), verb=st.sampled_from(["queued", "responded", "judged", "x"]))
def test_a_dead_letters_prompt_failure_never_raises(payload: bytes, verb: str) -> None:
    letter = DeadLetter(
        service="s",
        subject=f"evalbus.v1.batch.{p.BATCH}.prompt.{verb}",
        reason="r",
        payload=payload.decode("utf-8", errors="replace"),
    )
    row = prompt_failure(letter)
    assert row is None or (row["batch_id"] and row["prompt_id"])


@FUZZ
@given(body=st.one_of(p.json_values().map(p.dumps), st.binary(max_size=100)))
def test_advisory_parsing_raises_only_what_the_dead_letter_consumer_expects(body: bytes) -> None:
    msg = Incoming("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVALBUS_EVENTS.x", body, stream_seq=1)
    with contextlib.suppress(ValidationError, ValueError, KeyError, TypeError):  # dropped with a warning
        parse_dead_letter(msg)
