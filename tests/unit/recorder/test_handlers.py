"""The recorder's handlers with fakes (no NATS, no PostgreSQL): what each does with what it is
given, and, through `handle_batch` with fake messages, what becomes of the messages."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from contracts import subjects
from contracts.base import Event
from contracts.enums import FailureCategory, Stage
from contracts.events import BatchAccepted, PromptFailed, PromptQueued, PromptScored
from contracts.inputs import BatchConfig, ChatMessage
from contracts.ops import BreakerStateChanged, DeadLetter
from services.recorder import handlers, parsing
from services.recorder.parsing import Advisory, BreakerRow
from services.recorder.tracker import screen_verdicts
from services.runtime.messaging.handling import (
    DEFERRED_DELIVERIES,
    Incoming,
    Invalid,
    Policy,
    Refusal,
    handle_batch,
)
from tests.factories import BatchEvents
from tests.fakes import FakeJs, FakeMsg, policy_for


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


BATCH = "b-hnd"
CFG = BatchConfig(model="m")
ADVISORY_SUBJECT = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVALBUS_EVENTS.chat-runner"


@dataclass
class FakeTracker:
    refusals: dict[int, Refusal] = field(default_factory=dict)  # by prompt index
    written: list[list[Event | None]] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)

    async def screen(self, events: Sequence[Event | None]) -> list[Refusal | None]:
        return [self.refusals.get(getattr(e, "index", -1)) for e in events]

    async def write(self, events: Sequence[Event | None]) -> None:
        self.written.append(list(events))

    def touched(self, batch_ids: set[str]) -> None:
        self.dirty |= batch_ids


@dataclass
class FakeRepository:
    letters: list[DeadLetter] = field(default_factory=list)
    breakers: list[BreakerRow] = field(default_factory=list)

    async def record_dead_letters(self, letters: list[DeadLetter]) -> set[str]:
        self.letters += letters
        return {b for dl in letters if (b := subjects.batch_id_of(dl.subject)) is not None}

    async def record_breaker_events(self, rows: Sequence[BreakerRow]) -> None:
        self.breakers += rows


@dataclass
class FakeOriginals:
    stream: dict[int, Incoming] = field(default_factory=dict)
    down: bool = False

    async def read(self, stream_seq: int) -> Incoming | None:
        if self.down:
            raise TimeoutError("the broker did not answer")
        return self.stream.get(stream_seq)


def queued(index: int) -> PromptQueued:
    return PromptQueued(
        batch_id=BATCH,
        prompt_id=f"{BATCH}-{index:06d}",
        index=index,
        messages=[ChatMessage(role="user", content="q")],
        config=CFG,
    )


def advisory(seq: int, deliveries: object = 3) -> bytes:
    return orjson.dumps({"stream_seq": seq, "consumer": "chat-runner", "deliveries": deliveries})


def policy(js: FakeJs, parse: Any, invalid: Invalid = Invalid.DEAD_LETTER) -> Policy[Any]:
    return policy_for(js, parse, "recorder", invalid=invalid)


# ---- events ------------------------------------------------------------------------------------


async def test_on_events_writes_what_it_is_given() -> None:
    tracker = FakeTracker()
    events: list[Event | None] = [_scored(BATCH, 0), _scored(BATCH, 1)]
    await handlers.on_events(events, tracker)
    assert tracker.written == [events]


async def test_the_screen_passes_the_trackers_verdicts_on() -> None:
    refusal = Refusal("no such prompt")
    tracker = FakeTracker(refusals={1: refusal})
    assert await handlers.screen_events([_scored(BATCH, 0), _scored(BATCH, 1)], tracker) == [None, refusal]


def test_verdicts_refuse_prompts_a_batch_does_not_have_and_defer_those_of_unrecorded_batches() -> None:
    events: list[Event | None] = [
        _scored("b-known", 1),
        _scored("b-known", 2),  # the batch has 2 prompts: no prompt 2
        _scored("b-rejected", 0),
        _scored("b-later", 0),  # no row yet: deferred
        BatchAccepted(batch_id="b-here", config=CFG, suite_name="s", total_prompts=1),
        _scored("b-here", 0),  # accepted in this very write
        _scored("b-here", 1),
    ]
    verdicts = screen_verdicts(events, {"b-known": 2, "b-rejected": None})
    assert verdicts[0] is None and verdicts[4] is None and verdicts[5] is None
    assert verdicts[1] == Refusal("batch 'b-known' has 2 prompts: no prompt 2")
    assert verdicts[2] == Refusal("batch 'b-rejected' was rejected: it has no prompts")
    assert verdicts[3] == Refusal("batch 'b-later' not recorded yet", retry=True)
    assert verdicts[6] == Refusal("batch 'b-here' has 1 prompts: no prompt 1")


async def test_a_refused_event_is_dead_lettered_a_deferred_one_comes_back_and_the_rest_are_written() -> None:
    js = FakeJs()
    tracker = FakeTracker(refusals={1: Refusal("no prompt 1"), 2: Refusal("not recorded yet", retry=True)})
    raws = [FakeMsg(_scored(BATCH, i).subject, _scored(BATCH, i).to_json(), i + 1) for i in range(3)]
    late = FakeMsg(_scored(BATCH, 2).subject, _scored(BATCH, 2).to_json(), 9, delivered=DEFERRED_DELIVERIES)

    async def screen(events: list[Event | None]) -> list[Refusal | None]:
        return await handlers.screen_events(events, tracker)

    async def work(events: list[Event | None]) -> None:
        await handlers.on_events(events, tracker)

    await handle_batch(policy(js, parsing.parse_event), [*raws, late], work, screen)  # type: ignore[list-item]
    assert [e.index for e in tracker.written[0] if e is not None] == [0]  # type: ignore[attr-defined]
    assert [m.settled for m in raws] == [["ack"], ["ack"], ["nak"]] and late.settled == ["ack"]
    letters = js.letters()
    assert [dl.reason for dl in letters] == ["no prompt 1", f"not recorded yet after {DEFERRED_DELIVERIES} deliveries"]


async def test_an_event_that_does_not_parse_is_dead_lettered_and_never_reaches_the_tracker() -> None:
    js = FakeJs()
    tracker = FakeTracker()
    forged = _scored(BATCH, 0).model_copy(update={"prompt_id": "someone-else"})
    raws = [
        FakeMsg(_scored(BATCH, 0).subject, forged.to_json(), 1),
        FakeMsg(subjects.batch_event(BATCH, "batch", "completed"), b"FORGED", 2),  # passed by unread
        FakeMsg(_scored(BATCH, 1).subject, _scored(BATCH, 1).to_json(), 3),
    ]

    async def work(events: list[Event | None]) -> None:
        await handlers.on_events(events, tracker)

    await handle_batch(policy(js, parsing.parse_event), raws, work)  # type: ignore[arg-type]
    assert [[e.index for e in w if e is not None] for w in tracker.written] == [[1]]  # type: ignore[attr-defined]
    assert [m.settled for m in raws] == [["ack"]] * 3
    [letter] = js.letters()
    assert "is not prompt 0 of batch" in letter.reason and letter.stream_seq == 1


# ---- dead letters ------------------------------------------------------------------------------


async def test_a_services_dead_letter_is_stored_and_its_batch_touched() -> None:
    letter = DeadLetter(service="judge", subject=queued(0).subject, reason="bad", payload="{}")
    repository, tracker = FakeRepository(), FakeTracker()
    await handlers.on_dead_letters([letter], FakeOriginals(), repository, tracker)
    assert repository.letters == [letter] and tracker.dirty == {BATCH}


async def test_an_advisory_becomes_a_dead_letter_holding_the_original_message() -> None:
    original = queued(0)
    originals = FakeOriginals({42: Incoming(original.subject, original.to_json() + b"\x00", 42)})
    repository, tracker = FakeRepository(), FakeTracker()
    item = parsing.parse_dead_letter(Incoming(ADVISORY_SUBJECT, advisory(42)))
    assert item == Advisory(42, "chat-runner", "3")
    await handlers.on_dead_letters([item], originals, repository, tracker)
    [letter] = repository.letters
    assert (letter.service, letter.subject, letter.stream_seq) == ("chat-runner", original.subject, 42)
    assert letter.reason == "not processed after 3 deliveries to chat-runner"
    assert letter.payload == original.to_json().decode() + "\\x00"  # storable
    assert tracker.dirty == {BATCH}


async def test_an_advisory_whose_original_aged_out_keeps_nothing() -> None:
    repository, tracker = FakeRepository(), FakeTracker()
    await handlers.on_dead_letters([Advisory(7, "judge", "20")], FakeOriginals(), repository, tracker)
    assert repository.letters == [] and tracker.dirty == set()


async def test_an_original_that_cannot_be_read_now_fails_the_handler_so_it_comes_back() -> None:
    with pytest.raises(TimeoutError):
        await handlers.on_dead_letters(
            [Advisory(7, "judge", "20")], FakeOriginals(down=True), FakeRepository(), FakeTracker()
        )


@pytest.mark.parametrize(
    ("subject", "data"),
    [
        (ADVISORY_SUBJECT, b"not json"),
        (ADVISORY_SUBJECT, b"[1, 2]"),  # not an object
        (ADVISORY_SUBJECT, b'{"consumer": "x"}'),  # no stream_seq
        (ADVISORY_SUBJECT, b'{"stream_seq": {}}'),
        (ADVISORY_SUBJECT, b'{"stream_seq": "0"}'),
        (ADVISORY_SUBJECT, orjson.dumps({"stream_seq": 2**63})),
        (subjects.dlq("judge"), b"{}"),
        (subjects.dlq("judge"), b'{"service": "s", "subject": "x", "reason": "r", "payload": "", "stream_seq": -1}'),
    ],
)
def test_unusable_messages_on_the_dead_letter_stream_do_not_parse(subject: str, data: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        parsing.parse_dead_letter(Incoming(subject, data))


async def test_unusable_dead_letter_stream_messages_are_only_acked_and_the_rest_stored() -> None:
    js = FakeJs()
    letter = DeadLetter(service="judge", subject=queued(1).subject, reason="bad", payload="{}")
    original = queued(0)
    originals = FakeOriginals({5: Incoming(original.subject, original.to_json(), 5)})
    repository, tracker = FakeRepository(), FakeTracker()
    raws = [
        FakeMsg(ADVISORY_SUBJECT, b"[]", 1),
        FakeMsg(subjects.dlq("judge"), letter.model_dump_json().encode(), 2),
        FakeMsg(ADVISORY_SUBJECT, advisory(5, deliveries=[1]), 3),
    ]

    async def work(items: list[DeadLetter | Advisory]) -> None:
        await handlers.on_dead_letters(items, originals, repository, tracker)

    await handle_batch(policy(js, parsing.parse_dead_letter, Invalid.DROP), raws, work)  # type: ignore[arg-type]
    assert [m.settled for m in raws] == [["ack"]] * 3 and js.published == []  # no dead letter of a dead letter
    assert [dl.subject for dl in repository.letters] == [letter.subject, original.subject]
    assert repository.letters[1].reason == "not processed after [1] deliveries to chat-runner"


# ---- breaker events ----------------------------------------------------------------------------


def breaker_event() -> BreakerStateChanged:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return BreakerStateChanged(service="judge", endpoint="e", old_state="closed", new_state="open", occurred_at=at)


async def test_breaker_events_are_stored_keyed_by_their_stream_sequence() -> None:
    evt = breaker_event()
    row = parsing.parse_breaker_event(Incoming(subjects.breaker("http://e/v1"), evt.model_dump_json().encode(), 17))
    assert row == BreakerRow(17, evt)
    repository = FakeRepository()
    await handlers.on_breaker_events([row], repository)
    assert repository.breakers == [row]


async def test_an_unusable_breaker_event_is_only_acked() -> None:
    js = FakeJs()
    repository = FakeRepository()
    good = breaker_event().model_dump_json().encode()
    raws = [FakeMsg("evalbus.v1.breaker.e", b'{"new_state": "melted"}', 1), FakeMsg("evalbus.v1.breaker.e", good, 2)]

    async def work(rows: list[BreakerRow]) -> None:
        await handlers.on_breaker_events(rows, repository)

    await handle_batch(policy(js, parsing.parse_breaker_event, Invalid.DROP), raws, work)  # type: ignore[arg-type]
    assert [m.settled for m in raws] == [["ack"], ["ack"]] and js.published == []
    assert [r.stream_seq for r in repository.breakers] == [2]


def test_prompt_failed_events_parse_for_the_tracker() -> None:
    failed = PromptFailed(
        batch_id=BATCH,
        prompt_id=f"{BATCH}-000000",
        index=0,
        stage=Stage.CHAT,
        category=FailureCategory.TIMEOUT,
        error="slow",
    )
    assert parsing.parse_event(Incoming(failed.subject, failed.to_json())) == failed
