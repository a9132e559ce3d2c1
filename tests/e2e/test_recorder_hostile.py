"""Hostile events and queries against the running recorder process: it neither jams nor exits."""

import asyncio
import json
import secrets
from typing import Any

import nats
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.events import BatchCompleted
from contracts.inputs import BatchConfig, Case, StartBatchRequested, SuiteRef
from evalbus import client
from evalbus.stack import Stack

pytestmark = pytest.mark.e2e


async def _rows(stack: Stack, sql: str, **params: object) -> list[Any]:
    engine = create_async_engine(stack.database_url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(sql), params)]
    finally:
        await engine.dispose()


async def test_a_valid_and_a_malformed_start_back_to_back_are_both_recorded(stack: Stack) -> None:
    good, bad = "b-pair-" + secrets.token_hex(3), "b-pair-" + secrets.token_hex(3)
    start = StartBatchRequested(
        batch_id=good,
        config=BatchConfig(model="evalbus-fake", judge_enabled=False),
        suite=SuiteRef(cases=[Case(prompt=f"q{i}") for i in range(3)]),
    )
    nc = await nats.connect(stack.nats_url)
    done = await nc.subscribe(subjects.batch_event(good, "batch", "completed"))
    js = nc.jetstream()
    await js.publish(subjects.start_requested(good), start.model_dump_json().encode(), stream=subjects.STREAM_EVENTS)
    await js.publish(
        subjects.start_requested(bad), json.dumps({"batch_id": bad}).encode(), stream=subjects.STREAM_EVENTS
    )
    completed = BatchCompleted.model_validate_json((await done.next_msg(timeout=120)).data)
    await nc.drain()
    assert completed.report.completed == 3
    rows: dict[object, object] = {}
    for _ in range(100):  # the row is marked finished right after the completion is published
        rows = dict(
            await _rows(stack, "SELECT batch_id, status FROM batches WHERE batch_id IN (:g, :b)", g=good, b=bad)
        )
        if rows.get(good) != "running":
            break
        await asyncio.sleep(0.1)
    assert rows == {good: completed.status.value, bad: "rejected"}
    assert stack.check_alive() == []


async def test_a_nul_payload_on_a_recorders_subject_ends_stored_as_a_dead_letter(stack: Stack) -> None:
    batch_id = "b-nul-" + secrets.token_hex(3)
    subject = subjects.batch_event(batch_id, "prompt", "scored")
    nc = await nats.connect(stack.nats_url)
    await nc.jetstream().publish(subject, b"\x00\xff{not json\x00", stream=subjects.STREAM_EVENTS)
    await nc.drain()
    for _ in range(200):
        stored = await _rows(stack, "SELECT service, payload FROM dead_letters WHERE subject = :s", s=subject)
        if any(service == "recorder" for service, _ in stored):
            break
        await asyncio.sleep(0.1)
    assert ("recorder", "\\x00\\xff{not json\\x00") in stored
    assert stack.check_alive() == []


async def test_a_megabyte_query_gets_a_bounded_error_and_the_recorder_answers_the_next(stack: Stack) -> None:
    nc = await nats.connect(stack.nats_url)
    try:
        big = orjson.dumps({"batch_id": "b-x", "filters": ["case_id=" + "y" * 900_000]})
        with pytest.raises(client.ApiError) as err:
            await client.request(nc, subjects.api("batch.samples"), big, timeout_s=20)
        assert err.value.code == "400" and len(err.value.description) <= 1000
        with pytest.raises(client.ApiError) as err:
            await client.request(nc, subjects.api("batch.status"), b'{"batch_id": "b-none-here"}', timeout_s=20)
        assert err.value.code == "404"
    finally:
        await nc.drain()
    assert stack.check_alive() == []
