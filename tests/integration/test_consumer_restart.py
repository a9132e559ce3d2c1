"""The pull loop across nats-server restarts (a clean stop and a kill -9, on the same port and
store): messages published before, during and after the restarts are all handled, and the
consumer resumes by itself after each one. Each test starts a nats-server of its own."""

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import subjects
from contracts.events import PromptScored
from contracts.topology import ConsumerSpec
from infra.embedded import NatsServer
from infra.nats_topology import apply_topology, consumer_config
from services.runtime.messaging.consumer import Consumer
from services.runtime.messaging.publishing import publish_events
from tests.factories import BatchEvents

pytestmark = pytest.mark.integration

N = 300
# After the last restart the server recovers its streams and the consumer asks again: generous
# for a loaded 2-core machine, far below "never".
RESUME_BOUND_S = 60.0


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    srv = await asyncio.to_thread(NatsServer(tmp_path / "nats").start)
    await apply_topology(srv.url)
    try:
        yield srv
    finally:
        srv.stop()


async def connect(url: str) -> Client:
    # As make_broker connects: reconnect forever, quickly.
    return await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2)


async def add_consumer(nc: Client, batch_id: str) -> ConsumerSpec:
    spec = ConsumerSpec(
        durable=f"restart-{batch_id}",
        stream=subjects.STREAM_EVENTS,
        filter_subject=subjects.batch_event(batch_id, "prompt", "scored"),
        ack_wait_s=3,  # a message whose ack went with the server comes back soon
        max_deliver=-1,
        max_ack_pending=64,
    )
    await nc.jetstream().add_consumer(spec.stream, consumer_config(spec))
    return spec


async def publish_until_stored(nc: Client, batch_id: str, indexes: range, pace_s: float) -> None:
    """A producer that retries each event until the (restarting) server stores it."""
    js = nc.jetstream()
    for i in indexes:
        while True:
            try:
                await publish_events(js, [BatchEvents(batch_id).scored(i)])
                break
            except Exception:
                await asyncio.sleep(0.2)
        await asyncio.sleep(pace_s)


async def restart(srv: NatsServer, *, kill: bool, down_s: float) -> None:
    await asyncio.to_thread(srv.stop, kill)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(srv.start)


async def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def index_of(raw: Msg) -> int:
    return PromptScored.model_validate_json(raw.data).index


async def run_through_restarts(
    srv: NatsServer, consumer_for: Callable[[Client, ConsumerSpec, set[int]], Consumer]
) -> None:
    batch_id = "b-restart-" + secrets.token_hex(3)
    admin = await connect(srv.url)
    worker = await connect(srv.url)
    producer = await connect(srv.url)
    spec = await add_consumer(admin, batch_id)
    await admin.close()
    handled: set[int] = set()
    consumer = consumer_for(worker, spec, handled)
    await consumer.start()
    publishing = asyncio.create_task(publish_until_stored(producer, batch_id, range(N), pace_s=0.005))
    try:
        for kill in (False, True, True, False):
            await wait_until(lambda: len(handled) > 0, RESUME_BOUND_S, "nothing handled before a restart")
            before = len(handled)
            await restart(srv, kill=kill, down_s=0.5)
            # After each restart the consumer resumes on its own, within a bounded time.
            await wait_until(
                lambda b=before: len(handled) > b or len(handled) == N,  # type: ignore[misc]
                RESUME_BOUND_S,
                f"consumer did not resume after a {'kill -9' if kill else 'stop'} and restart ({len(handled)}/{N})",
            )
        await asyncio.wait_for(publishing, RESUME_BOUND_S)
        await wait_until(lambda: len(handled) == N, RESUME_BOUND_S, f"only {len(handled)} of {N} handled")
    finally:
        publishing.cancel()
        with contextlib.suppress(BaseException):
            await publishing
        await consumer.stop(grace_s=2)
        for nc in (worker, producer):
            with contextlib.suppress(Exception):
                await nc.close()
    assert handled == set(range(N))


async def test_per_message_consumer_resumes_after_every_restart(server: NatsServer) -> None:
    def consumer_for(nc: Client, spec: ConsumerSpec, handled: set[int]) -> Consumer:
        js = nc.jetstream()

        async def on_message(raw: Msg) -> None:
            i = index_of(raw)
            # Like a real worker: publish a result, then ack (a restart may lose either).
            await publish_events(js, [BatchEvents(f"{spec.durable}-out").scored(i)])
            await raw.ack()
            handled.add(i)

        return Consumer(nc, spec, on_message=on_message, slots=16, batch_size=16)

    await run_through_restarts(server, consumer_for)


async def test_batched_consumer_resumes_after_every_restart(server: NatsServer) -> None:
    def consumer_for(nc: Client, spec: ConsumerSpec, handled: set[int]) -> Consumer:
        async def on_batch(raws: list[Msg]) -> None:
            for raw in raws:
                await raw.ack()
            handled.update(index_of(r) for r in raws)

        return Consumer(nc, spec, on_batch=on_batch, batch_size=32, max_wait_s=0.1)

    await run_through_restarts(server, consumer_for)


async def test_publishes_refused_while_reconnecting_leave_no_pending_slot(server: NatsServer) -> None:
    # nats-py keeps a slot of its publish_async pending limit for every future it registered; a
    # publish refused during a reconnect (reconnect buffer full) left one behind for good, and
    # the futures already made in the same call were never awaited: enough reconnects and every
    # publish waited forever for a slot.
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5, pending_size=4096)
    js = nc.jetstream()
    batch_id = "b-orphan-" + secrets.token_hex(3)
    try:
        await publish_events(js, [BatchEvents(batch_id).scored(0)])  # connected: stored
        await asyncio.to_thread(server.stop, True)
        await wait_until(lambda: not nc.is_connected, 10, "the client did not notice the server was gone")
        refused = 0
        for attempt in range(5):
            with contextlib.suppress(Exception):
                await publish_events(js, [BatchEvents(batch_id).scored(100 * attempt + i) for i in range(40)])
                continue
            refused += 1
        assert refused == 5  # 40 events do not fit a 4 KiB reconnect buffer
        await asyncio.sleep(0.1)  # done-callbacks (which free the slots) run on the loop
        # What was buffered before the refusal is cancelled too: nothing holds a slot.
        assert js.publish_async_pending() == 0
    finally:
        with contextlib.suppress(Exception):  # closing while disconnected may raise in nats-py
            await nc.close()
