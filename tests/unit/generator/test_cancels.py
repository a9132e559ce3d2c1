"""A cancel is recorded only for a batch that was started, and only on its own subject (issue 12,
defects 12 and 4): a cancel kept for an unknown id would cancel every prompt of a later start."""

import json

from contracts import subjects
from contracts.inputs import CancelBatchRequested
from contracts.topology import GENERATOR_CANCEL, KV_CANCELS
from services.generator.handlers import CANCEL_WAITS_FOR_START_S
from tests.unit.generator.fakes import FakeJS, FakeMsg, deliver_cancel, deliver_start
from tests.unit.generator.test_start_claims import start_msg

BATCH = "b-cancel"


def cancel_msg(batch_id: str = BATCH, subject_batch: str | None = None) -> FakeMsg:
    body = CancelBatchRequested(batch_id=batch_id, reason="user asked").model_dump_json().encode()
    return FakeMsg(subjects.cancel_requested(subject_batch or batch_id), body)


async def deliver(js: FakeJS, msg: FakeMsg) -> str:
    return await deliver_cancel(js, msg)


def cancelled(js: FakeJS) -> dict[str, bytes]:
    bucket = js.buckets.get(KV_CANCELS)
    return {k: e.value for k, e in bucket.data.items()} if bucket else {}


async def test_cancel_of_a_batch_never_started_waits_then_is_dead_lettered() -> None:
    js = FakeJS()
    msg = cancel_msg()
    delays = []
    for _ in range(len(CANCEL_WAITS_FOR_START_S)):
        assert await deliver(js, msg) == "nak"
        delays.append(msg.settled[-1][1])
        msg = msg.redelivered()
    assert delays == list(CANCEL_WAITS_FOR_START_S)
    assert len(CANCEL_WAITS_FOR_START_S) < GENERATOR_CANCEL.max_deliver  # refused before JetStream gives up
    assert await deliver(js, msg) == "ack"
    assert cancelled(js) == {}
    [letter] = js.dead_letters
    assert letter.reason == f"no batch {BATCH} was started"


async def test_starting_an_id_after_its_refused_cancel_runs_every_prompt() -> None:
    js = FakeJS()
    msg = cancel_msg()
    for _ in range(len(CANCEL_WAITS_FOR_START_S)):
        await deliver(js, msg)
        msg = msg.redelivered()
    assert await deliver(js, msg) == "ack"
    assert await deliver_start(js, start_msg(batch_id=BATCH)) == "ack"
    assert len(js.accepted()) == 1 and BATCH not in cancelled(js)


async def test_cancel_handled_just_before_its_start_is_recorded_once_the_start_claimed_it() -> None:
    js = FakeJS()
    early = cancel_msg()
    assert await deliver(js, early) == "nak"
    assert await deliver_start(js, start_msg(batch_id=BATCH)) == "ack"
    assert await deliver(js, early.redelivered()) == "ack"
    assert cancelled(js) == {BATCH: b"user asked"} and js.dead_letters == []


async def test_cancel_whose_body_names_another_batch_is_dead_lettered() -> None:
    js = FakeJS()
    assert await deliver_start(js, start_msg(batch_id="b-victim")) == "ack"
    assert await deliver_start(js, start_msg(batch_id=BATCH)) == "ack"
    forged = cancel_msg(batch_id="b-victim", subject_batch=BATCH)
    assert await deliver(js, forged) == "ack"
    assert cancelled(js) == {}
    assert "does not match the subject" in js.dead_letters[0].reason


async def test_garbage_cancel_is_dead_lettered_at_once() -> None:
    js = FakeJS()
    msg = FakeMsg(subjects.cancel_requested(BATCH), json.dumps({"batch_id": 7}).encode())
    assert await deliver(js, msg) == "ack"
    assert cancelled(js) == {} and "invalid cancel event" in js.dead_letters[0].reason
