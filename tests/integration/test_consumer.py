"""The pull loop against a real nats-server: messages are handed over as they arrive, batches
form by size or wait, idle requests are renewed, and a stopping consumer gives back what it held."""

import asyncio
import secrets
import time
from collections.abc import Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import subjects
from contracts.events import PromptScored
from contracts.topology import ConsumerSpec
from infra.nats_topology import consumer_config
from services.runtime.messaging import consumer as consumer_module
from services.runtime.messaging.consumer import BatchHandler, Consumer
from services.runtime.messaging.publishing import publish_events
from tests.factories import BatchEvents
from tests.integration.test_bus import make_consumer

pytestmark = pytest.mark.integration


async def wait_until(check: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def index_of(raw: Msg) -> int:
    return PromptScored.model_validate_json(raw.data).index


def acking_batches() -> tuple[list[list[int]], BatchHandler]:
    """A batch handler that acks what it is handed and keeps the indexes, batch by batch."""
    batches: list[list[int]] = []

    async def on_batch(raws: list[Msg]) -> None:
        batches.append([index_of(r) for r in raws])
        for raw in raws:
            await raw.ack()

    return batches, on_batch


def long_pull_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pull requests that stay open far longer than a test waits: a message delivered only once a
    request expires or is given up on would then miss the wait, however loaded the machine."""
    monkeypatch.setattr(consumer_module, "PULL_EXPIRES_S", 60.0)
    monkeypatch.setattr(consumer_module, "PULL_LOST_AFTER_S", 62.0)


async def test_a_lone_message_is_worked_on_without_waiting_for_a_full_batch(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_pull_requests(monkeypatch)
    batch_id = "b-lone-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    got: list[float] = []

    async def on_message(raw: Msg) -> None:
        got.append(time.monotonic())
        await raw.ack()

    consumer = Consumer(nc, spec, on_message=on_message, slots=128, batch_size=64)
    await consumer.start()
    await asyncio.sleep(0.3)  # the consumer is idle, its pull request open on the server
    await publish_events(nc.jetstream(), [BatchEvents(batch_id).scored(0)])
    await wait_until(lambda: got)  # within 10 s: the open request (60 s) delivers it, not its renewal
    await consumer.stop()


async def test_batches_form_by_size_or_by_wait_and_take_every_message_once(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_pull_requests(monkeypatch)
    js = nc.jetstream()
    batch_id = "b-batches-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    await publish_events(js, [BatchEvents(batch_id).scored(i) for i in range(45)])
    batches, on_batch = acking_batches()
    consumer = Consumer(nc, spec, on_batch=on_batch, batch_size=20, max_wait_s=0.2)
    await consumer.start()
    await wait_until(lambda: sum(map(len, batches)) == 45)
    # One more, alone: handed over after max_wait (0.2 s), within the 10 s wait, not after the
    # pull request expires (60 s).
    await publish_events(js, [BatchEvents(batch_id).scored(45)])
    await wait_until(lambda: sum(map(len, batches)) == 46)
    await consumer.stop()
    assert max(map(len, batches)) == 20 and batches[-1] == [45]
    assert sorted(i for b in batches for i in b) == list(range(46))
    info = await js.consumer_info(spec.stream, spec.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_trickle_is_gathered_into_one_batch(nc: Client) -> None:
    # A fetch returned whatever had arrived, so a trickle became one write per message.
    js = nc.jetstream()
    batch_id = "b-trickle-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    batches, on_batch = acking_batches()
    consumer = Consumer(nc, spec, on_batch=on_batch, batch_size=100, max_wait_s=1.0)
    await consumer.start()
    await asyncio.sleep(0.2)
    for i in range(8):
        await publish_events(js, [BatchEvents(batch_id).scored(i)])
        await asyncio.sleep(0.02)
    await wait_until(lambda: sum(map(len, batches)) == 8)
    await consumer.stop()
    assert len(batches) <= 2 and sorted(i for b in batches for i in b) == list(range(8))


async def test_expired_pull_requests_are_renewed(nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "PULL_EXPIRES_S", 0.2)
    # Requests given up on only long after the test's 10 s wait: nothing but renewal delivers in time.
    monkeypatch.setattr(consumer_module, "PULL_LOST_AFTER_S", 60.0)
    monkeypatch.setattr(consumer_module, "PULL_SILENT_S", 60.0)
    batch_id = "b-renew-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    got: list[int] = []

    async def on_message(raw: Msg) -> None:
        got.append(index_of(raw))
        await raw.ack()

    consumer = Consumer(nc, spec, on_message=on_message, slots=4)
    await consumer.start()
    await asyncio.sleep(1.0)  # several requests expire (408) and are asked again at once
    await publish_events(nc.jetstream(), [BatchEvents(batch_id).scored(7)])
    # Were an expired request not renewed, this would wait for PULL_LOST_AFTER_S (60 s).
    await wait_until(lambda: got)
    await consumer.stop()
    assert got == [7]


async def test_slots_bound_the_messages_taken(nc: Client) -> None:
    batch_id = "b-slots-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    await publish_events(nc.jetstream(), [BatchEvents(batch_id).scored(i) for i in range(30)])
    release = asyncio.Event()
    running = 0
    most = 0
    done: list[int] = []

    async def on_message(raw: Msg) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        done.append(index_of(raw))
        await raw.ack()

    consumer = Consumer(nc, spec, on_message=on_message, slots=4, batch_size=64)
    await consumer.start()
    await wait_until(lambda: running == 4)
    await asyncio.sleep(0.3)
    assert running == 4  # no more taken while every slot is busy
    release.set()
    await wait_until(lambda: len(done) == 30)
    await consumer.stop()
    assert most == 4 and sorted(done) == list(range(30))


async def test_a_stopping_consumer_gives_back_what_it_had_gathered(nc: Client) -> None:
    js = nc.jetstream()
    batch_id = "b-giveback-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)  # ack wait 30 s: a message not given back waits that long
    await publish_events(js, [BatchEvents(batch_id).scored(i) for i in range(10)])
    stuck = asyncio.Event()
    first: list[int] = []

    async def slow_batch(raws: list[Msg]) -> None:
        first.extend(index_of(r) for r in raws)
        stuck.set()
        await asyncio.sleep(60)  # cancelled by stop(); these 5 stay unacked until the ack wait

    holder = Consumer(nc, spec, on_batch=slow_batch, batch_size=5, max_wait_s=0.05)
    await holder.start()
    await stuck.wait()
    await wait_until(lambda: holder.status()["in_flight"] == 5)  # the next batch gathered meanwhile
    await holder.stop(grace_s=0.1)

    batches, on_batch = acking_batches()
    taker = Consumer(nc, spec, on_batch=on_batch, batch_size=5, max_wait_s=0.05)
    await taker.start()
    await wait_until(lambda: sum(map(len, batches)) == 5, timeout_s=5)
    await taker.stop()
    assert sorted(first + [i for b in batches for i in b]) == list(range(10))


async def test_a_pull_request_lost_without_an_answer_is_asked_again(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request can vanish with no answer and no reconnect to tell (lost with a dead connection's
    # buffer, or by a server that restarted between a resubscribe and the request). Without idle
    # heartbeats the loop waited out the request's whole expiry for it.
    monkeypatch.setattr(consumer_module, "PULL_EXPIRES_S", 60.0)
    monkeypatch.setattr(consumer_module, "PULL_LOST_AFTER_S", 62.0)
    batch_id = "b-lostreq-" + secrets.token_hex(3)
    spec = await make_consumer(nc, batch_id)
    got: list[int] = []

    async def on_message(raw: Msg) -> None:
        got.append(index_of(raw))
        await raw.ack()

    consumer = Consumer(nc, spec, on_message=on_message, slots=4)
    real_publish = nc.publish
    dropped: list[bytes] = []

    async def drop_first_pull(subject: str, payload: bytes = b"", reply: str = "", headers=None) -> None:  # type: ignore[no-untyped-def]
        if subject.startswith("$JS.API.CONSUMER.MSG.NEXT.") and not dropped:
            dropped.append(payload)  # never reaches the server
            return
        await real_publish(subject, payload, reply=reply, headers=headers)

    monkeypatch.setattr(nc, "publish", drop_first_pull)
    await consumer.start()
    await wait_until(lambda: dropped)
    await publish_events(nc.jetstream(), [BatchEvents(batch_id).scored(3)])
    await wait_until(lambda: got, timeout_s=30)  # heartbeats missing for PULL_SILENT_S: asked again
    await consumer.stop()
    assert got == [3] and consumer.lost_requests >= 1


async def test_the_watchdog_rebinds_a_consumer_that_receives_nothing(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever cuts the inbox off (here its subscription goes away behind the loop's back), the
    # server holds messages for the consumer and nothing arrives: the watchdog notices and binds
    # a new inbox. Before, nothing noticed and the consumer stayed silent for good.
    monkeypatch.setattr(consumer_module, "WATCH_EVERY_S", 0.5, raising=False)
    monkeypatch.setattr(consumer_module, "STALL_AFTER_S", 1.0, raising=False)
    batch_id = "b-watchdog-" + secrets.token_hex(3)
    spec = ConsumerSpec(
        durable=f"test-{batch_id}",
        stream=subjects.STREAM_EVENTS,
        filter_subject=subjects.batch_event(batch_id, "prompt", "scored"),
        ack_wait_s=1.0,  # what went to the dead inbox is redelivered soon
        max_deliver=-1,
        max_ack_pending=100,
    )
    await nc.jetstream().add_consumer(spec.stream, consumer_config(spec))
    got: list[int] = []

    async def on_message(raw: Msg) -> None:
        got.append(index_of(raw))
        await raw.ack()

    consumer = Consumer(nc, spec, on_message=on_message, slots=4)
    await consumer.start()
    await wait_until(lambda: consumer.status()["bound"])
    sub = consumer._inbox_sub
    assert sub is not None
    await sub.unsubscribe()  # replies to this inbox now go nowhere
    await publish_events(nc.jetstream(), [BatchEvents(batch_id).scored(i) for i in range(3)])
    await wait_until(lambda: len(got) == 3, timeout_s=30)
    await consumer.stop()
    assert sorted(got) == [0, 1, 2] and consumer.rebinds >= 1
