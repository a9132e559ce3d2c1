"""No single event jams, fools or overflows the recorder: its events consumer path (parse, screen,
write, dead letters) on messages fetched from a real NATS server, written to a real PostgreSQL."""

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import nats
import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import subjects
from contracts.base import Event
from contracts.enums import FailureCategory, Stage
from contracts.events import BatchAccepted, BatchCompleted, PromptFailed, PromptResponded, PromptScored, Usage
from contracts.inputs import BatchConfig, ChatMessage
from contracts.ops import DeadLetter
from services.recorder import checks, handlers, reporting
from services.recorder.parsing import parse_event
from services.recorder.repository import record_dead_letters
from services.recorder.tracker import Tracker
from services.runtime.messaging.handling import Policy, Refusal, handle_batch
from services.runtime.messaging.keepalive import InProgress
from services.runtime.messaging.publishing import JetStreamPublisher
from tests.factories import BatchEvents


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


pytestmark = pytest.mark.integration
CFG = BatchConfig(model="m")


@dataclass
class Rig:
    nc: Client
    js: JetStreamContext
    engine: AsyncEngine
    tracker: Tracker
    letters: list[DeadLetter]

    async def publish(self, subject: str, data: bytes) -> None:
        await self.js.publish(subject, data, stream=subjects.STREAM_EVENTS)

    async def publish_events(self, events: Sequence[Event]) -> None:
        for evt in events:
            await self.publish(evt.subject, evt.to_json())

    async def handle(self, count: int, write: object = None) -> JetStreamContext.PullSubscription:
        """Fetch `count` messages as the recorder's consumer does and handle them as one batch."""
        durable = "test-guard-" + secrets.token_hex(4)
        sub = await self.js.pull_subscribe(
            subjects.EVENTS_SUBJECTS,
            durable=durable,
            stream=subjects.STREAM_EVENTS,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.first_seq,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=60,
                max_deliver=5,
            ),
        )
        raws: list[Msg] = []
        while len(raws) < count:
            raws += await sub.fetch(count - len(raws), timeout=10)
        await self.work(raws, write)
        await self.nc.flush()
        return sub

    async def work(self, raws: list[Msg], write: object = None) -> None:
        """As the recorder's events consumer handles what it fetched (service.batch_consumer)."""
        policy = Policy(
            "recorder",
            parse_event,
            JetStreamPublisher(lambda: self.js),
            InProgress(lambda: 20.0),
            transient=checks.database_down,
        )

        async def on_events(events: list[Event | None]) -> None:
            await handlers.on_events(events, self.tracker)

        async def screen(events: list[Event | None]) -> list[Refusal | None]:
            return await handlers.screen_events(events, self.tracker)

        try:
            await handle_batch(policy, raws, write or on_events, screen)  # type: ignore[arg-type]
        finally:
            await policy.alive.aclose()

    first_seq: int = 0

    async def mark(self) -> None:
        """Messages published from here on are the next `handle`'s."""
        info = await self.js.stream_info(subjects.STREAM_EVENTS)
        self.first_seq = info.state.last_seq + 1

    async def wait_letters(self, n: int) -> list[DeadLetter]:
        for _ in range(200):
            if len(self.letters) >= n:
                break
            await asyncio.sleep(0.05)
        assert len(self.letters) == n, [dl.reason for dl in self.letters]
        return list(self.letters)

    async def progress(self, batch_id: str) -> tuple[int, int, int, int]:
        async with self.engine.connect() as conn:
            prog = await reporting.progress(conn, batch_id)
        assert prog is not None
        return (prog.total, prog.scored, prog.failed, int(prog.cancelled))


@pytest.fixture
async def rig(servers) -> AsyncIterator[Rig]:  # type: ignore[no-untyped-def]
    nc = await nats.connect(servers.nats_url)
    engine = create_async_engine(servers.database_url)
    letters: list[DeadLetter] = []

    async def keep(msg: Msg) -> None:
        letters.append(DeadLetter.model_validate_json(msg.data))

    await nc.subscribe(subjects.dlq("recorder"), cb=keep)
    js = nc.jetstream()
    rig = Rig(nc, js, engine, Tracker(engine, JetStreamPublisher(lambda: js)), letters)
    await rig.mark()
    try:
        yield rig
    finally:
        await nc.close()
        await engine.dispose()


def new_batch() -> str:
    return "b-guard-" + secrets.token_hex(3)


def accepted(batch_id: str, total: int) -> BatchAccepted:
    return BatchAccepted(batch_id=batch_id, config=CFG, suite_name="s", total_prompts=total)


async def test_scores_for_prompts_a_batch_does_not_have_do_not_count(rig: Rig) -> None:
    batch_id = new_batch()
    forged = [_scored(batch_id, i) for i in range(100_000, 100_050)]
    wrong_id = _scored(batch_id, 5).model_copy(update={"prompt_id": f"{batch_id}-x"})
    real = [_scored(batch_id, i) for i in range(200)]
    # accepted in the same fetch as the scores: the write's own `accepted` counts
    await rig.publish_events([accepted(batch_id, 200), *forged, wrong_id, *real])
    done = await rig.nc.subscribe(subjects.batch_event(batch_id, "batch", "completed"))
    await rig.handle(252)
    assert await rig.progress(batch_id) == (200, 200, 0, 0)
    await rig.tracker.flush()
    report = BatchCompleted.model_validate_json((await done.next_msg(timeout=20)).data).report
    assert (report.total, report.completed, report.failed) == (200, 200, 0)
    letters = await rig.wait_letters(51)
    assert sum("has 200 prompts: no prompt 1000" in dl.reason for dl in letters) == 50
    assert sum("is not prompt 5 of batch" in dl.reason for dl in letters) == 1


async def test_a_prompt_event_for_a_batch_not_recorded_yet_comes_back_later(rig: Rig) -> None:
    early = new_batch()
    await rig.publish_events([_scored(early, 0)])
    sub = await rig.handle(1)
    info = await sub.consumer_info()
    assert info.num_ack_pending == 1 and rig.letters == []  # nak'ed with a delay, not dead-lettered
    async with rig.engine.begin() as conn:
        from services.recorder.repository import record

        await record(conn, [accepted(early, 1)])
    redelivered = await sub.fetch(1, timeout=30)  # after the first retry delay
    await rig.work(redelivered)
    assert await rig.progress(early) == (1, 1, 0, 0)


async def test_a_cancel_of_batch_b_on_batch_as_subject_ends_neither(rig: Rig) -> None:
    a, b = new_batch(), new_batch()
    cancel_b = PromptFailed(
        batch_id=b,
        prompt_id=f"{b}-000000",
        index=0,
        stage=Stage.CHAT,
        category=FailureCategory.CANCELLED,
        error="cancelled",
    )
    await rig.publish_events([accepted(a, 1), accepted(b, 1)])
    await rig.publish(subjects.batch_event(a, "prompt", "failed"), cancel_b.to_json())
    await rig.handle(3)
    assert await rig.progress(b) == (1, 0, 0, 0) and await rig.progress(a) == (1, 0, 0, 0)
    [letter] = await rig.wait_letters(1)
    assert "does not match the event" in letter.reason and letter.subject.startswith(f"evalbus.v1.batch.{a}.")


async def test_nul_bytes_and_values_beyond_their_columns_are_dead_lettered_and_stored(rig: Rig) -> None:
    batch_id = new_batch()
    answer = PromptResponded(
        batch_id=batch_id,
        prompt_id=f"{batch_id}-000000",
        index=0,
        messages=[ChatMessage(role="user", content="q")],
        answer="a",
        model="m",
        usage=Usage(tokens_in=5),
        config=CFG,
    )
    beyond = answer.to_json().replace(b'"tokens_in":5', b'"tokens_in":1000000000000')  # past integer
    assert beyond != answer.to_json()
    nul_reason = orjson.loads(_scored(batch_id, 1).to_json()) | {"reasons": ["bad\u0000"]}
    infinite = _scored(batch_id, 2).to_json().replace(b'"overall_score":7.0', b'"overall_score":Infinity')
    await rig.publish_events([accepted(batch_id, 4), _scored(batch_id, 3)])
    await rig.publish(answer.subject, beyond)
    await rig.publish(subjects.batch_event(batch_id, "prompt", "scored"), b"\x00\xff not json \x00")
    await rig.publish(subjects.batch_event(batch_id, "prompt", "scored"), orjson.dumps(nul_reason))
    await rig.publish(subjects.batch_event(batch_id, "prompt", "scored"), infinite)
    await rig.publish(subjects.batch_event(batch_id, "prompt", "scored"), b'{"index": 100000000000000000000000000000}')
    await rig.handle(7)
    assert await rig.progress(batch_id) == (4, 1, 0, 0)  # prompt 3's score, written beside them all
    letters = await rig.wait_letters(5)
    reasons = " | ".join(dl.reason for dl in letters)
    assert "tokens_in" in reasons and "NUL" in reasons and "finite" in reasons, reasons
    async with rig.engine.begin() as conn:
        await record_dead_letters(conn, letters)
    async with rig.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT payload FROM dead_letters WHERE subject LIKE :s"), {"s": f"evalbus.v1.batch.{batch_id}.%"}
            )
        ).scalars()
        payloads = list(stored)
    assert len(payloads) == 5 and any(p.startswith("\\x00\\xff not json") for p in payloads), payloads


async def test_one_poison_event_in_a_fetch_of_100_delays_none_of_the_others(rig: Rig) -> None:
    batch_id = new_batch()
    await rig.publish_events([accepted(batch_id, 100)])
    await rig.handle(1)
    await rig.mark()
    await rig.publish_events([_scored(batch_id, i) for i in range(100)])
    attempts: list[int] = []

    async def write(events: list[Event | None]) -> None:
        # A fault no check foresaw, on one event: everything fetched beside it must still land.
        attempts.append(len(events))
        if any(isinstance(e, PromptScored) and e.index == 37 for e in events):
            raise RuntimeError("poison")
        await handlers.on_events(events, rig.tracker)

    sub = await rig.handle(100, write)
    assert await rig.progress(batch_id) == (100, 99, 0, 0)  # in the first handling: no retry delay
    info = await sub.consumer_info()
    assert info.num_ack_pending == 1 and info.num_redelivered == 0  # only the poison waits to come back
    assert len(attempts) <= 15
