"""Bad start commands get a rejection with a reason; nothing is half-recorded; nothing crashes."""

import asyncio
import json
import secrets

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.events import BatchRejected
from contracts.inputs import BatchConfig, CancelBatchRequested, Case, StartBatchRequested, SuiteRef
from contracts.topology import KV_CANCELS, RECORDER_EVENTS
from evalbus.stack import Stack

pytestmark = pytest.mark.e2e


def valid_start(batch_id: str) -> dict[str, object]:
    start = StartBatchRequested(
        batch_id=batch_id, config=BatchConfig(model="evalbus-fake"), suite=SuiteRef(cases=[Case(prompt="hello")])
    )
    return start.model_dump(mode="json")


CASES: list[tuple[str, object, str]] = [
    ("not-json", b"{this is not json", "invalid start-batch event"),
    ("missing-fields", {"batch_id": "BID"}, "config: Field required"),
    ("empty-suite", lambda b: valid_start(b) | {"suite": {"cases": []}}, "the suite has no cases"),
    ("unreadable", lambda b: valid_start(b) | {"suite": {"path": "/nonexistent/x.jsonl"}}, "does not exist"),
    # A file the generator could open is answered as a missing one: no suite directory holds it.
    ("system-file", lambda b: valid_start(b) | {"suite": {"path": "/etc/passwd"}}, "does not exist"),
    ("builtin-escape", lambda b: valid_start(b) | {"suite": {"builtin": "../../../../etc/passwd"}}, "no bundled"),
    (
        "foreign-upload",
        lambda b: valid_start(b) | {"suite": {"object": f"b-other.{'0' * 64}.jsonl"}},
        "an uploaded suite of batch",
    ),
    (
        "out-of-range",
        lambda b: valid_start(b) | {"config": {"model": "m", "concurrency": 100000}},
        "config.concurrency",
    ),
    (
        "bad-threshold",
        lambda b: valid_start(b) | {"config": {"model": "m", "criteria": ["accuracy"], "thresholds": {"accuracy": 42}}},
        "between 1 and 10",
    ),
    ("wrong-version", lambda b: valid_start(b) | {"schema_version": 99}, "schema_version"),
    ("mismatched-id", lambda b: valid_start(b) | {"batch_id": "b-someone-else"}, "does not match"),
]


@pytest.mark.parametrize(("name", "body", "reason"), CASES, ids=[c[0] for c in CASES])
async def test_bad_start_is_rejected_with_a_reason(stack: Stack, cli, name: str, body: object, reason: str) -> None:
    batch_id = f"b-bad-{name}-{secrets.token_hex(2)}"
    if callable(body):
        body = body(batch_id)
    payload = body if isinstance(body, bytes) else json.dumps(body).replace("BID", batch_id).encode()
    nc = await nats.connect(stack.nats_url)
    sub = await nc.subscribe(subjects.batch_event(batch_id, "batch", "rejected"))
    await nc.jetstream().publish(subjects.start_requested(batch_id), payload, stream=subjects.STREAM_EVENTS)
    msg = await sub.next_msg(timeout=20)
    await nc.drain()
    rejected = BatchRejected.model_validate_json(msg.data)
    assert reason in rejected.reason
    engine = create_async_engine(stack.database_url)
    try:
        for _ in range(50):  # the recorder notes the rejection; no prompt of it exists
            async with engine.connect() as conn:
                status = (
                    await conn.execute(text("SELECT status FROM batches WHERE batch_id = :b"), {"b": batch_id})
                ).scalar_one_or_none()
                prompts = (
                    await conn.execute(text("SELECT count(*) FROM prompts WHERE batch_id = :b"), {"b": batch_id})
                ).scalar_one()
            if status:
                break
            await asyncio.sleep(0.1)
    finally:
        await engine.dispose()
    assert status == "rejected" and prompts == 0
    assert stack.check_alive() == []


async def test_cli_prints_the_reason_and_exits_non_zero(stack: Stack, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 42}\n')
    result = await asyncio.to_thread(cli, "run", str(bad), "--model", "evalbus-fake")
    assert result.returncode == 2
    assert "rejected" in result.stderr and "line 2" in result.stderr
    missing = await asyncio.to_thread(cli, "run", "/nonexistent/suite.jsonl", "--model", "m")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    invalid = await asyncio.to_thread(cli, "run", str(bad), "--model", "m", "--concurrency", "0")
    assert invalid.returncode == 2 and "concurrency" in invalid.stderr
    assert stack.check_alive() == []


async def test_a_large_suite_is_uploaded_by_the_cli(stack: Stack, cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    big = tmp_path / "big.jsonl"  # over the inline limit: it travels through the object store
    big.write_text("".join(json.dumps({"prompt": f"case {i} " + "x" * 190_000}) + "\n" for i in range(3)))
    result = await asyncio.to_thread(cli, "run", str(big), "--model", "evalbus-fake", "--no-judge", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] == 3 and report["completed"] == 3 and report["suite_name"] == "big.jsonl"
    assert stack.check_alive() == []


async def batch_status(stack: Stack, batch_id: str) -> str | None:
    engine = create_async_engine(stack.database_url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(text("SELECT status FROM batches WHERE batch_id = :b"), {"b": batch_id})
            return found.scalar_one_or_none()
    finally:
        await engine.dispose()


async def recorder_caught_up(js: JetStreamContext) -> None:
    """Until the recorder has settled every event stored so far."""
    for _ in range(200):
        info = await js.consumer_info(subjects.STREAM_EVENTS, RECORDER_EVENTS.durable)
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"recorder still has {info.num_pending} pending, {info.num_ack_pending} unacked")


async def test_a_repeated_start_is_rejected_and_the_batch_kept(stack: Stack) -> None:
    batch_id = "b-repeat-" + secrets.token_hex(2)
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    rejected = await nc.subscribe(subjects.batch_event(batch_id, "batch", "rejected"))
    await js.publish(subjects.start_requested(batch_id), json.dumps(valid_start(batch_id)).encode())
    for _ in range(100):
        first = await batch_status(stack, batch_id)
        if first is not None:
            break
        await asyncio.sleep(0.1)
    assert first in ("running", "completed")
    again = valid_start(batch_id) | {"config": {"model": "another-model"}}
    await js.publish(subjects.start_requested(batch_id), json.dumps(again).encode())  # another body, no msg id
    repeat = BatchRejected.model_validate_json((await rejected.next_msg(timeout=60)).data)
    assert repeat.repeated_start and "already started" in repeat.reason and "single-use" in repeat.reason
    await recorder_caught_up(js)
    await nc.drain()
    assert await batch_status(stack, batch_id) in ("running", "completed")  # not marked rejected
    assert stack.check_alive() == []


async def test_a_cancel_for_a_batch_never_started_is_dead_lettered(stack: Stack) -> None:
    batch_id = "b-nocancel-" + secrets.token_hex(2)
    nc = await nats.connect(stack.nats_url)
    dlq = await nc.subscribe(subjects.dlq("generator"))
    cancel = CancelBatchRequested(batch_id=batch_id)
    await nc.jetstream().publish(subjects.cancel_requested(batch_id), cancel.model_dump_json().encode())
    while True:  # after the wait for its start (about 30 s of retries)
        letter = json.loads((await dlq.next_msg(timeout=90)).data)
        if batch_id in letter["subject"]:
            break
    kv = await nc.jetstream().key_value(KV_CANCELS)
    with pytest.raises(KeyNotFoundError):
        await kv.get(batch_id)
    await nc.drain()
    assert letter["reason"] == f"no batch {batch_id} was started"
    assert stack.check_alive() == []


async def test_poison_events_go_to_the_dead_letter_stream(stack: Stack, cli) -> None:
    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    batch_id = "b-poison-" + secrets.token_hex(2)
    sub = await nc.subscribe(subjects.dlq("chat-runner"))
    await js.publish(
        subjects.batch_event(batch_id, "prompt", "queued"), b'{"batch_id": 1}', stream=subjects.STREAM_EVENTS
    )
    letter = json.loads((await sub.next_msg(timeout=20)).data)
    await nc.drain()
    assert letter["subject"].endswith(".prompt.queued") and "prompt_id" in letter["reason"]
    assert stack.check_alive() == []
