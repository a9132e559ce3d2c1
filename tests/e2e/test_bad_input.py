"""Bad start commands get a rejection with a reason; nothing is half-recorded; nothing crashes."""

import asyncio
import json
import secrets

import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.events import BatchConfig, BatchRejected, Case, StartBatchRequested, SuiteRef
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
