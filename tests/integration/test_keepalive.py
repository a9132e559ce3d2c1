"""Work longer than the ack wait is kept alive by the consumer's in-progress ticker: not redelivered."""

import asyncio
import secrets
from collections import Counter

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import subjects
from contracts.base import Event
from contracts.events import PromptScored
from contracts.topology import ConsumerSpec
from infra.nats_topology import consumer_config
from services.runtime.messaging.consumer import Consumer
from services.runtime.messaging.handling import Policy, handle_one, typed
from services.runtime.messaging.keepalive import InProgress
from services.runtime.messaging.publishing import JetStreamPublisher, publish_events
from tests.factories import BatchEvents


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


pytestmark = pytest.mark.integration


async def test_work_longer_than_the_ack_wait_is_not_redelivered(nc: Client) -> None:
    js = nc.jetstream()
    batch_id = "b-alive-" + secrets.token_hex(3)
    spec = ConsumerSpec(
        durable=f"test-{batch_id}",
        stream=subjects.STREAM_EVENTS,
        filter_subject=subjects.any_batch("prompt", "scored").replace("*", batch_id),
        ack_wait_s=1,
        max_deliver=5,
        max_ack_pending=100,
    )
    await js.add_consumer(spec.stream, consumer_config(spec))
    await publish_events(js, [_scored(batch_id, i) for i in range(3)])
    calls: Counter[str] = Counter()
    out = "b-alive-out-" + secrets.token_hex(3)

    async def work(evt: PromptScored) -> Event:
        calls[evt.prompt_id] += 1
        await asyncio.sleep(2.5)  # 2.5 ack waits
        return _scored(out, evt.index)

    consumer: Consumer
    alive = InProgress(lambda: max(0.3, consumer.ack_wait_s / 3))

    async def on_message(raw: Msg) -> None:
        await handle_one(Policy("test-worker", typed(PromptScored), JetStreamPublisher(lambda: js), alive), raw, work)

    consumer = Consumer(nc, spec, on_message=on_message, slots=8, max_wait_s=0.2)
    await consumer.start()
    for _ in range(60):
        if consumer.handled == 3:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.5)  # a redelivery would show up here
    await consumer.stop()
    await alive.aclose()
    assert sorted(calls.values()) == [1, 1, 1]
    info = await js.consumer_info(spec.stream, spec.durable)
    assert info.num_ack_pending == 0 and info.num_redelivered == 0 and len(alive) == 0
