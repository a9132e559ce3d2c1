"""Batch ids are single-use: one start per id wins, atomically; a repeat is told why; a redelivery
of the winning start finishes its work (issue 12, defects 10 and 11, and failures not retried)."""

import asyncio
import json

import pytest

from contracts import subjects
from contracts.inputs import BatchConfig, Case, StartBatchRequested, SuiteRef
from contracts.topology import GENERATOR_START, KV_STARTS
from services.generator import claims, handlers, logic
from services.generator.claims import StartClaim, StartState
from tests.unit.generator.fakes import FakeJS, FakeMsg, deliver_start

BATCH = "b-claims"


def start_msg(model: str = "m", cases: int = 2, batch_id: str = BATCH, delivered: int = 1) -> FakeMsg:
    start = StartBatchRequested(
        batch_id=batch_id,
        config=BatchConfig(model=model),
        suite=SuiteRef(cases=[Case(prompt=f"p{i}") for i in range(cases)]) if cases else SuiteRef(cases=[]),
    )
    return FakeMsg(subjects.start_requested(batch_id), start.model_dump_json().encode(), delivered)


async def deliver(js: FakeJS, msg: FakeMsg) -> str:
    return await deliver_start(js, msg)


async def deliver_until_settled(js: FakeJS, msg: FakeMsg) -> FakeMsg:
    """Redeliver a nak'd message as JetStream would, until it is acked."""
    for _ in range(GENERATOR_START.max_deliver):
        if await deliver(js, msg) == "ack":
            return msg
        msg = msg.redelivered()
    raise AssertionError("never acked")


def claim_of(js: FakeJS, batch_id: str = BATCH) -> StartClaim:
    return StartClaim.parse(js.buckets[KV_STARTS].data[batch_id].value)


async def test_near_simultaneous_starts_of_one_id_accept_exactly_one() -> None:
    js = FakeJS()
    msgs = [start_msg(model="m"), start_msg(model="other"), start_msg(model="third")]
    await asyncio.gather(*(deliver(js, m) for m in msgs))
    # Exactly one start won the claim; the others wait (nak with a delay) while it is unsettled.
    assert len(js.accepted()) == 1
    winner = js.accepted()[0].config.model
    for m in msgs:
        if m.outcome == "nak":
            assert (m.settled[-1][1] or 0) > 0
            await deliver_until_settled(js, m.redelivered())
    assert [a.config.model for a in js.accepted()] == [winner]
    assert len(js.queued()) == 2 and {q.config.model for q in js.queued()} == {winner}
    repeats = js.rejected()
    assert len(repeats) == 2 and all(r.repeated_start for r in repeats)
    assert all("already started" in r.reason and "single-use" in r.reason for r in repeats)
    assert len({r.event_id for r in repeats}) == 2  # not dropped as duplicates of each other
    assert claim_of(js).state is StartState.ACCEPTED


async def test_empty_and_valid_start_at_once_get_one_outcome() -> None:
    js = FakeJS()
    empty, valid = start_msg(cases=0), start_msg(cases=3)
    await asyncio.gather(deliver(js, empty), deliver(js, valid))
    for m in (empty, valid):
        if m.outcome == "nak":
            await deliver_until_settled(js, m.redelivered())
    own = [r for r in js.rejected() if not r.repeated_start]
    assert len(js.accepted()) + len(own) == 1  # either accepted or rejected, never both
    assert len([r for r in js.rejected() if r.repeated_start]) == 1


async def test_repeat_of_a_finished_batch_is_rejected_without_touching_it() -> None:
    js = FakeJS()
    assert await deliver(js, start_msg()) == "ack"
    first = claim_of(js)
    repeat = start_msg(model="other")
    assert await deliver(js, repeat) == "ack"
    [rejection] = js.rejected()
    assert rejection.repeated_start and f"batch {BATCH} was already started at" in rejection.reason
    assert "(accepted)" in rejection.reason and "single-use" in rejection.reason
    assert rejection.event_id != logic.BatchRejected(batch_id=BATCH, reason="x").event_id  # not the batch's own
    assert claim_of(js) == first  # the first start's claim and state are unchanged
    assert len(js.accepted()) == 1


async def test_a_rejected_id_cannot_be_started_again() -> None:
    js = FakeJS()
    assert await deliver(js, start_msg(cases=0)) == "ack"
    [own] = js.rejected()
    assert not own.repeated_start and "no cases" in own.reason
    assert await deliver(js, start_msg(cases=2)) == "ack"
    assert js.accepted() == []
    repeat = js.rejected()[1]
    assert repeat.repeated_start and "(rejected)" in repeat.reason and "single-use" in repeat.reason
    assert claim_of(js).state is StartState.REJECTED


async def test_an_invalid_start_uses_its_id_too() -> None:
    js = FakeJS()
    bad = FakeMsg(subjects.start_requested(BATCH), json.dumps({"batch_id": BATCH}).encode())
    assert await deliver(js, bad) == "ack"
    assert [r.repeated_start for r in js.rejected()] == [False] and len(js.dead_letters) == 1
    assert await deliver(js, start_msg()) == "ack"
    assert js.accepted() == [] and js.rejected()[1].repeated_start


async def test_redelivery_after_a_crash_mid_publish_finishes_the_batch() -> None:
    js = FakeJS(fail_after=2)  # accepted and the first chunk of prompts are stored, then a publish times out
    msg = start_msg(cases=300)
    assert await deliver(js, msg) == "nak"
    assert claim_of(js).state is StartState.CLAIMED and len(js.accepted()) == 1
    assert await deliver(js, msg.redelivered()) == "ack"
    assert len(js.accepted()) == 1 and js.rejected() == []
    assert sorted(q.index for q in js.queued()) == list(range(300))
    assert claim_of(js).state is StartState.ACCEPTED
    # Once settled, a further redelivery publishes nothing.
    before = len(js.published)
    assert await deliver(js, msg.redelivered().redelivered()) == "ack"
    assert len(js.published) == before


async def test_a_repeat_still_waiting_at_its_last_delivery_is_answered() -> None:
    js = FakeJS()
    mine = StartClaim.new("someone-else", b"another start")  # claimed by a start that died
    await (await js.key_value(KV_STARTS)).create(BATCH, mine.to_bytes())
    assert await deliver(js, start_msg(delivered=1)) == "nak"
    assert await deliver(js, start_msg(delivered=GENERATOR_START.max_deliver)) == "ack"
    [rejection] = js.rejected()
    assert rejection.repeated_start and "(claimed)" in rejection.reason


async def test_a_suite_that_breaks_the_reader_is_rejected_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> int:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(logic, "count_cases", broken)
    js = FakeJS()
    assert await deliver(js, start_msg()) == "ack"
    [rejection] = js.rejected()
    assert rejection.reason == logic.UNEXPECTED and claim_of(js).state is StartState.REJECTED


async def test_an_unexpected_failure_after_the_claim_is_rejected_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(handlers, "publish_plan", broken)
    js = FakeJS()
    assert await deliver(js, start_msg()) == "ack"
    # The failure came after the accepted event could have gone out: the batch is not rejected.
    assert js.rejected() == [] and claim_of(js).state is StartState.ACCEPTED
    assert "publishing its prompts failed" in js.dead_letters[0].reason


async def test_an_unexpected_failure_anywhere_is_dead_lettered_and_acked(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*_: object) -> None:
        raise ZeroDivisionError

    monkeypatch.setattr(claims, "claim", broken)
    js = FakeJS()
    assert await deliver(js, start_msg()) == "ack"
    assert "unexpected ZeroDivisionError" in js.dead_letters[0].reason


async def test_a_publish_failure_is_retried() -> None:
    js = FakeJS(fail_after=0)
    assert await deliver(js, start_msg()) == "nak"
    assert js.dead_letters == []


async def test_a_start_recorded_before_claims_existed_counts_as_used() -> None:
    js = FakeJS()
    await (await js.key_value(KV_STARTS)).put(BATCH, b"accepted")  # what earlier versions stored
    assert await deliver(js, start_msg()) == "ack"
    [rejection] = js.rejected()
    assert rejection.repeated_start and "was already started (accepted)" in rejection.reason
    assert js.accepted() == []
