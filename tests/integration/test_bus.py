"""Publishing, consuming, dead letters and acks against a real nats-server with JetStream."""

import asyncio
import logging
import secrets
from collections.abc import Sequence

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import subjects
from contracts.base import Event
from contracts.events import PromptScored
from contracts.inputs import BatchConfig
from contracts.ops import DeadLetter
from contracts.topology import ConsumerSpec
from infra.nats_topology import consumer_config
from services.runtime.messaging import connection as bus
from services.runtime.messaging.consumer import Consumer
from services.runtime.messaging.handling import Policy, handle_batch, typed
from services.runtime.messaging.keepalive import InProgress
from services.runtime.messaging.publishing import JetStreamPublisher, publish_events
from tests.factories import BatchEvents


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


pytestmark = pytest.mark.integration


async def test_same_event_published_twice_is_stored_once(nc: Client) -> None:
    js = nc.jetstream()
    batch_id = "b-dup-" + secrets.token_hex(3)
    first = await publish_events(js, [_scored(batch_id, 0), _scored(batch_id, 1)])
    again = await publish_events(js, [_scored(batch_id, 0)])
    assert not any(a.duplicate for a in first) and again[0].duplicate
    assert again[0].seq == first[0].seq


async def make_consumer(nc: Client, batch_id: str, max_deliver: int = 5) -> ConsumerSpec:
    spec = ConsumerSpec(
        durable=f"test-{batch_id}",
        stream=subjects.STREAM_EVENTS,
        filter_subject=subjects.any_batch("prompt", "scored").replace("*", batch_id),
        ack_wait_s=30,
        max_deliver=max_deliver,
        max_ack_pending=100,
    )
    await nc.jetstream().add_consumer(spec.stream, consumer_config(spec))
    return spec


async def test_batched_worker_dead_letters_bad_messages_and_keeps_the_rest(nc: Client) -> None:
    js = nc.jetstream()
    batch_id = "b-dlq-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    await publish_events(js, [_scored(batch_id, i) for i in range(5)])
    subject = subjects.batch_event(batch_id, "prompt", "scored")
    await js.publish(subject, b"{not json", stream=subjects.STREAM_EVENTS)
    await js.publish(subject, b'{"batch_id": "%s"}' % batch_id.encode(), stream=subjects.STREAM_EVENTS)
    dlq = await nc.subscribe(subjects.dlq("test-worker"))

    seen: list[PromptScored] = []

    async def work(events: list[PromptScored]) -> Sequence[Event]:
        seen.extend(events)
        return []

    async def on_batch(raws: list[Msg]) -> None:
        policy = Policy("test-worker", typed(PromptScored), JetStreamPublisher(lambda: js), InProgress(lambda: 10.0))
        await handle_batch(policy, raws, work)

    consumer = Consumer(nc, spec, on_batch=on_batch, batch_size=50, max_wait_s=0.2)
    await consumer.start()
    letters = [DeadLetter.model_validate_json((await dlq.next_msg(timeout=10)).data) for _ in range(2)]
    await asyncio.sleep(0.5)
    await consumer.stop()
    assert sorted(e.index for e in seen) == [0, 1, 2, 3, 4]
    assert {dl.subject for dl in letters} == {subject}
    assert any("JSON" in dl.reason or "json" in dl.reason for dl in letters)
    assert any("prompt_id" in dl.reason for dl in letters)
    info = await js.consumer_info(spec.stream, spec.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0  # everything settled, nothing redelivered


async def test_failed_work_is_redelivered_with_a_delay_and_not_lost(nc: Client) -> None:
    js = nc.jetstream()
    batch_id = "b-nak-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    await publish_events(js, [_scored(batch_id, i) for i in range(3)])
    attempts: dict[str, int] = {}
    done: set[str] = set()

    async def on_message(raw: Msg) -> None:
        evt = PromptScored.model_validate_json(raw.data)
        attempts[evt.prompt_id] = attempts.get(evt.prompt_id, 0) + 1
        if evt.index == 1 and attempts[evt.prompt_id] == 1:
            await raw.nak(delay=0.2)  # a transient fault, as settle(ok=False) does
            return
        done.add(evt.prompt_id)
        await raw.ack()

    consumer = Consumer(nc, spec, on_message=on_message, slots=4, max_wait_s=0.2)
    await consumer.start()
    for _ in range(50):
        if len(done) == 3:
            break
        await asyncio.sleep(0.1)
    await consumer.stop()
    assert len(done) == 3 and attempts[f"{batch_id}-000001"] == 2


def test_config_is_carried_whole_in_prompt_events() -> None:
    # The next step needs no lookup: thresholds and criteria travel with the prompt.
    cfg = BatchConfig(model="m", criteria=["accuracy"], thresholds={"accuracy": 9})
    assert BatchConfig.model_validate_json(cfg.model_dump_json()).threshold("accuracy") == 9


async def test_a_clean_stop_is_logged_as_a_shutdown_not_an_outage(
    servers, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    # Every `evalbus down` made each service warn "disconnected from NATS; reconnecting": the
    # drain on shutdown calls the disconnected callback too.
    monkeypatch.setattr(bus._Lifecycle, "stopping", False)  # restored after the test
    broker = bus.make_broker("test-stop", servers.nats_url)
    await broker.connect()
    caplog.set_level(logging.INFO, logger="evalbus.bus")
    bus.mark_stopping()
    await broker.stop()
    records = [r for r in caplog.records if r.name == "evalbus.bus"]
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
    assert any("shutdown" in r.getMessage() for r in records)
