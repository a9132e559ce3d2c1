"""The one place a message meets its handler (services/runtime/messaging/handling.py), with fakes
for the broker side: parse, dead letters, screens, poison isolation, and what a handler raises."""

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from contracts.base import Event
from contracts.events import PromptScored
from services.runtime.messaging.handling import (
    Parse,
    Policy,
    Refusal,
    Refused,
    RetryLater,
    Unexpected,
    handle_batch,
    handle_isolated,
    handle_one,
    never_transient,
    typed,
)
from tests.factories import BatchEvents
from tests.fakes import FakeJs, FakeMsg, policy_for


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


BATCH = "b-iso"


def messages(n: int) -> list[FakeMsg]:
    return [FakeMsg(_scored(BATCH, i).subject, _scored(BATCH, i).to_json(), i + 1) for i in range(n)]


parse = typed(PromptScored)


def policy(
    js: FakeJs,
    parse: Parse[Any] = parse,
    transient: Callable[[BaseException], bool] = never_transient,
    unexpected: Unexpected = Unexpected.RETRY,
) -> Policy[Any]:
    return policy_for(js, parse, transient=transient, unexpected=unexpected)


async def test_one_poison_message_in_100_fails_alone_and_the_99_are_acked_on_their_first_delivery() -> None:
    raws = messages(100)
    calls: list[int] = []

    async def work(events: list[Event]) -> Sequence[Event]:
        calls.append(len(events))
        if any(getattr(e, "index", None) == 37 for e in events):
            raise RuntimeError("poison")
        return []

    await handle_batch(policy(FakeJs(), parse), raws, work)  # type: ignore[arg-type]
    assert [m.outcomes for i, m in enumerate(raws) if i != 37] == [[("ack", None)]] * 99
    assert raws[37].outcomes == [("nak", 2.0)]  # retried alone, with the first retry delay
    assert len(calls) <= 2 * 7 + 1  # a bisection, not one call per message


async def test_a_transient_fault_retries_the_batch_as_a_whole_without_splitting() -> None:
    raws = messages(50)
    calls: list[int] = []

    async def work(events: list[Event]) -> Sequence[Event]:
        calls.append(len(events))
        raise ConnectionRefusedError("database down")

    await handle_batch(policy(FakeJs(), parse, transient=lambda e: isinstance(e, OSError)), raws, work)  # type: ignore[arg-type]
    assert calls == [50] and all(m.outcomes == [("nak", 2.0)] for m in raws)


async def test_several_poison_messages_each_fail_alone() -> None:
    items = [(FakeMsg("s", b"", i), i) for i in range(256)]
    poison = {3, 100, 101, 255}

    async def attempt(values: list[int]) -> None:
        if poison & set(values):
            raise ValueError("bad")

    await handle_isolated("t", items, attempt)  # type: ignore[arg-type, list-item]
    assert {i for m, i in items if m.outcomes == [("nak", 2.0)]} == poison
    assert all(m.outcomes == [("ack", None)] for m, i in items if i not in poison)


async def test_an_event_on_another_batchs_subject_is_dead_lettered_never_worked_on() -> None:
    js = FakeJs()
    forged = _scored("b-other", 0)
    raw = FakeMsg(_scored(BATCH, 0).subject, forged.to_json(), 9)  # b-other's event on b-iso's subject
    worked: list[Event] = []

    async def work(events: list[Event]) -> Sequence[Event]:
        worked.extend(events)
        return []

    await handle_batch(policy(js, parse), [raw], work)  # type: ignore[arg-type, list-item]
    assert worked == [] and raw.outcomes == [("ack", None)]
    [letter] = js.letters()
    assert "does not match the event" in letter.reason and "b-other" in letter.reason


async def test_a_screen_refuses_or_defers_single_messages() -> None:
    js = FakeJs()
    raws = messages(3)

    async def screen(events: list[Event]) -> list[Refusal | None]:
        return [None, Refusal("not one of the batch's prompts"), Refusal("batch not recorded yet", retry=True)]

    worked: list[Event] = []

    async def work(events: list[Event]) -> Sequence[Event]:
        worked.extend(events)
        return []

    await handle_batch(policy(js, parse), raws, work, screen=screen)  # type: ignore[arg-type]
    assert [getattr(e, "index", None) for e in worked] == [0]
    assert [m.outcomes for m in raws] == [[("ack", None)], [("ack", None)], [("nak", 2.0)]]
    assert [d.reason for d in js.letters()] == ["not one of the batch's prompts"]


async def test_a_parse_that_raises_anything_dead_letters_that_message_alone() -> None:
    js = FakeJs()
    raws = messages(3)

    def fragile(msg: Any) -> Event:
        if msg.data == raws[1].data:
            raise RecursionError("maximum recursion depth exceeded")
        return parse(msg)

    worked: list[Event] = []

    async def work(events: list[Event]) -> Sequence[Event]:
        worked.extend(events)
        return []

    await handle_batch(policy(js, fragile), raws, work)  # type: ignore[arg-type]
    assert len(worked) == 2 and all(m.outcomes == [("ack", None)] for m in raws)
    assert [d.reason for d in js.letters()] == ["could not parse: RecursionError"]


async def test_a_deferred_message_is_dead_lettered_after_a_few_deliveries() -> None:
    js = FakeJs()
    [raw] = messages(1)
    raw.metadata.num_delivered = 5

    async def screen(events: list[Event]) -> list[Refusal | None]:
        return [Refusal("batch not recorded yet", retry=True)]

    async def work(events: list[Event]) -> Sequence[Event]:
        raise AssertionError("not worked on")

    await handle_batch(policy(js, parse), [raw], work, screen=screen)  # type: ignore[arg-type, list-item]
    assert raw.outcomes == [("ack", None)]
    assert [d.reason for d in js.letters()] == ["batch not recorded yet after 5 deliveries"]


async def test_results_the_broker_does_not_take_retry_the_batch_without_splitting() -> None:
    class DownJs(FakeJs):
        async def publish_async(self, subject: str, payload: bytes, **kw: Any) -> "asyncio.Future[object]":
            raise TimeoutError("nats: timeout")

    raws = messages(8)
    calls: list[int] = []

    async def work(events: list[Event]) -> Sequence[Event]:
        calls.append(len(events))
        return list(events)

    await handle_batch(policy(DownJs(), parse), raws, work)  # type: ignore[arg-type, list-item]
    assert calls == [8] and all(m.outcomes == [("nak", 2.0)] for m in raws)


# ---- one message, one handler call: what the handler returns or raises -------------------------


def one() -> FakeMsg:
    return messages(1)[0]


async def test_what_a_handler_returns_is_published_then_the_message_acked() -> None:
    js, raw = FakeJs(), one()
    seen: list[PromptScored] = []

    async def work(evt: PromptScored) -> Event:
        seen.append(evt)
        return _scored(BATCH, 5)

    await handle_one(policy(js), raw, work)  # type: ignore[arg-type]
    assert [e.index for e in seen] == [0] and raw.outcomes == [("ack", None)]
    assert [s for s, _ in js.published] == [_scored(BATCH, 5).subject]


async def test_retry_later_naks_with_the_handlers_delay() -> None:
    raw = one()

    async def work(evt: PromptScored) -> Event:
        raise RetryLater(7.5, "not started yet")

    await handle_one(policy(FakeJs()), raw, work)  # type: ignore[arg-type]
    assert raw.outcomes == [("nak", 7.5)]


async def test_refused_dead_letters_with_the_reason_and_acks() -> None:
    js, raw = FakeJs(), one()

    async def work(evt: PromptScored) -> Event:
        raise Refused("no batch b-iso was started")

    await handle_one(policy(js), raw, work)  # type: ignore[arg-type]
    assert raw.outcomes == [("ack", None)] and [d.reason for d in js.letters()] == ["no batch b-iso was started"]


async def test_an_unexpected_error_is_retried_or_dead_lettered_as_the_consumer_declares() -> None:
    async def work(evt: PromptScored) -> Event:
        raise KeyError("bug")

    retried, js = one(), FakeJs()
    await handle_one(policy(js), retried, work)  # type: ignore[arg-type]
    assert retried.outcomes == [("nak", 2.0)] and js.letters() == []
    lettered, js = one(), FakeJs()
    await handle_one(policy(js, unexpected=Unexpected.DEAD_LETTER), lettered, work)  # type: ignore[arg-type]
    assert lettered.outcomes == [("ack", None)]
    assert [d.reason for d in js.letters()] == ["unexpected KeyError in the t; not retried"]


async def test_a_transient_error_is_retried_even_where_unexpected_ones_are_dead_lettered() -> None:
    js, raw = FakeJs(), one()

    async def work(evt: PromptScored) -> Event:
        raise ConnectionRefusedError("broker away")

    pol = policy(js, transient=lambda e: isinstance(e, OSError), unexpected=Unexpected.DEAD_LETTER)
    await handle_one(pol, raw, work)  # type: ignore[arg-type]
    assert raw.outcomes == [("nak", 2.0)] and js.letters() == []


async def test_a_message_that_does_not_parse_never_reaches_the_handler() -> None:
    js = FakeJs()
    raw = FakeMsg(_scored(BATCH, 0).subject, b'{"batch_id": 3}', 1)

    async def work(evt: PromptScored) -> Event:
        raise AssertionError("not called")

    await handle_one(policy(js), raw, work)  # type: ignore[arg-type]
    [letter] = js.letters()
    assert raw.outcomes == [("ack", None)] and letter.reason.startswith("invalid PromptScored: ")


async def test_a_message_the_parser_passes_by_is_acked_unworked() -> None:
    js, raw = FakeJs(), one()

    async def work(evt: PromptScored) -> Event:
        raise AssertionError("not called")

    await handle_one(policy(js, parse=lambda msg: None), raw, work)  # type: ignore[arg-type]
    assert raw.outcomes == [("ack", None)] and js.published == []
