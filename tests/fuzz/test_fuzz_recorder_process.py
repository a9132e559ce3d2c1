"""The recorder's consumers that only its process can reach (the dead-letter and event closures
of `create_app`), fuzzed through a real recorder process on the session's NATS and PostgreSQL:
after each hostile message a sentinel is published, and it must be stored within a generous
time, so a poison message neither kills the consumer nor holds back the messages beside it."""

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import nats
import nats.js.errors
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import subjects
from contracts.events import BatchAccepted
from contracts.inputs import BatchConfig
from contracts.ops import DeadLetter
from evalbus.client import service_status
from evalbus.stack import Stack
from infra.processes import service_argv
from tests.fuzz import payloads as p

pytestmark = pytest.mark.integration
FEW = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
STORED_WITHIN_S = 30.0
ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVALBUS_EVENTS.recorder-events"


class Recorder:
    def __init__(self, stack: Stack, nc: Client, engine: AsyncEngine) -> None:
        self.stack, self.nc, self.js, self.engine = stack, nc, nc.jetstream(), engine

    async def publish(self, subject: str, data: bytes) -> tuple[str, int]:
        ack = await self.js.publish(subject, data, headers={"Nats-Msg-Id": "fz-" + secrets.token_hex(8)}, timeout=10)
        return ack.stream, ack.seq

    async def sentinel_letter(self) -> None:
        """A valid dead letter after the hostile one: stored in time, or the consumer is stuck."""
        subject = "fuzz.sentinel." + secrets.token_hex(4)
        letter = DeadLetter(
            service="fuzz", subject=subject, reason="sentinel", payload="{}", stream_seq=secrets.randbits(40)
        )
        await self.publish(subjects.dlq("fuzz"), letter.model_dump_json().encode())
        await self.stored("SELECT count(*) FROM dead_letters WHERE subject = :k", subject)

    async def sentinel_event(self) -> None:
        batch_id = "b-fz-" + secrets.token_hex(4)
        evt = BatchAccepted(batch_id=batch_id, config=BatchConfig(model="m"), suite_name="s", total_prompts=1)
        await self.publish(evt.subject, evt.to_json())
        await self.stored("SELECT count(*) FROM batches WHERE batch_id = :k", batch_id)

    async def stored(self, sql: str, key: str) -> None:
        deadline = time.monotonic() + STORED_WITHIN_S
        while time.monotonic() < deadline:
            assert self.stack.check_alive() == [], "the recorder exited"
            async with self.engine.connect() as conn:
                if (await conn.execute(text(sql), {"k": key})).scalar_one():
                    return
            await asyncio.sleep(0.3)
        raise AssertionError(f"{key} not stored within {STORED_WITHIN_S:g}s: the consumer is held back")


@pytest.fixture(scope="module")
async def recorder(servers) -> AsyncIterator[Recorder]:  # type: ignore[no-untyped-def]
    stack = Stack(servers.data_dir / "fuzz-recorder", nats_url=servers.nats_url, database_url=servers.database_url)
    stack.spawn("recorder", service_argv("recorder"))
    nc = await nats.connect(servers.nats_url)
    engine = create_async_engine(servers.database_url)
    try:
        deadline = time.monotonic() + 60
        while not (await service_status(nc, "recorder", timeout_s=2)).get("healthy"):
            assert time.monotonic() < deadline and not stack.check_alive(), "the recorder did not start"
        yield Recorder(stack, nc, engine)
    finally:
        stack.stop()
        await nc.drain()
        await engine.dispose()


no_nul_bytes = st.binary(max_size=200).filter(lambda b: b"\x00" not in b and b"\\u0000" not in b)
wrong_shapes = p.json_values().map(p.dumps).filter(lambda b: b"\\u0000" not in b)


async def hostile_then_sentinel(rec: Recorder, subject: str, body: bytes, sentinel: str) -> None:
    stream, seq = await rec.publish(subject, body)
    try:
        await (rec.sentinel_letter() if sentinel == "letter" else rec.sentinel_event())
    finally:  # a poison message left in the session's streams would hold back later tests' recorders
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await rec.js.delete_msg(stream, seq)


async def test_garbage_on_the_dead_letter_stream_holds_nothing_back(recorder: Recorder) -> None:
    for body in [b"\xff\xfe", b"{}", b"[]", b"null", p.deep(3000), orjson.dumps({"service": 1, "subject": []})]:
        await hostile_then_sentinel(recorder, subjects.dlq("fuzz"), body, "letter")


async def test_hostile_events_hold_nothing_back(recorder: Recorder) -> None:
    for verb in ("scored", "failed", "judged", "accepted"):
        entity = "batch" if verb == "accepted" else "prompt"
        subject = subjects.batch_event(p.BATCH, entity, verb)
        for body in [b"\xff\xfe", b"{}", p.deep(3000), b'{"batch_id": 5}', p.prompt_scored(10**6).to_json()]:
            await hostile_then_sentinel(recorder, subject, body, "event")


async def test_a_dead_letter_or_event_holding_nul_holds_nothing_back(recorder: Recorder) -> None:
    letter = DeadLetter(service="fuzz", subject="x", reason="r", payload="a\x00b", stream_seq=secrets.randbits(40))
    await hostile_then_sentinel(recorder, subjects.dlq("fuzz"), letter.model_dump_json().encode(), "letter")
    evt = p.prompt_failed(1).model_copy(update={"error": "e\x00"})
    await hostile_then_sentinel(recorder, evt.subject, evt.to_json(), "event")


async def test_a_forged_max_deliveries_advisory_holds_nothing_back(recorder: Recorder) -> None:
    for body in [b"[]", b'{"stream_seq": null}', b'{"stream_seq": "x"}', b'{"stream_seq": 10000000000}']:
        await hostile_then_sentinel(recorder, ADVISORY, body, "letter")


@FEW
@given(body=st.one_of(no_nul_bytes, wrong_shapes, p.mutated(p.prompt_scored()).filter(lambda b: b"\\u0000" not in b)))
async def test_arbitrary_events_hold_nothing_back(recorder: Recorder, body: bytes) -> None:
    await hostile_then_sentinel(recorder, subjects.batch_event(p.BATCH, "prompt", "scored"), body, "event")
