"""Two replicas' model clients sharing the concurrency cap through the real KV bucket
`evalbus_leases`, against the fake model, which counts the requests it answers at once."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import nats
import pytest
from nats.aio.client import Client

from contracts.topology import KV_LEASES, LEASE_TTL_S
from services.fake_model.server import start_server
from services.fake_model.settings import FakeModelSettings
from services.runtime.models.client import CallOptions, ChatClient
from services.runtime.models.endpoints import Endpoint
from services.runtime.models.leases import KvSlotStore, SharedLeases, batch_key


@pytest.fixture
async def fake_model() -> AsyncIterator[str]:
    runner, port = await start_server(FakeModelSettings(port=0, latency_ms=40, jitter_ms=20))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def peak_in_flight(base: str) -> int:
    async with httpx.AsyncClient(base_url=base) as http:
        return int((await http.get("/stats")).json()["peak_in_flight"])


def leases_on(nc: Client, **reuse: float) -> SharedLeases:
    js = nc.jetstream()
    store = KvSlotStore(lambda: js, KV_LEASES, nc=lambda: nc)
    return SharedLeases(store, ttl_s=LEASE_TTL_S, holder="test", **reuse)


async def test_two_replicas_never_exceed_the_batch_cap_together(servers, fake_model: str) -> None:  # type: ignore[no-untyped-def]
    conns = [await nats.connect(servers.nats_url) for _ in range(2)]
    clients = [
        ChatClient(endpoint_concurrency=64, retry_base_s=0.01, retry_max_s=0.05, leases=leases_on(nc)) for nc in conns
    ]
    opts = CallOptions(model="evalbus-fake", endpoint=Endpoint(url=f"{fake_model}/v1"), timeout_s=10, max_retries=0)
    messages = [{"role": "user", "content": "Where is my order?"}]
    try:
        done = await asyncio.gather(
            *(clients[i % 2].complete(messages, opts, batch_id="b-leases", batch_limit=3, tags={}) for i in range(36))
        )
    finally:
        for client in clients:
            await client.aclose()
        for nc in conns:
            await nc.close()
    assert len(done) == 36
    assert await peak_in_flight(fake_model) == 3


async def test_a_crashed_holders_slots_come_back_within_the_ttl(servers) -> None:  # type: ignore[no-untyped-def]
    nc = await nats.connect(servers.nats_url)
    kv = await nc.jetstream().key_value(KV_LEASES)
    key = batch_key("http://crashed.example/v1", "b-crash")
    await kv.create(f"{key}.0", b'{"holder": "dead"}')  # killed mid-call: it neither renews nor releases
    leases = leases_on(nc)
    started = time.monotonic()
    try:
        async with leases.hold(key, 1):
            waited = time.monotonic() - started
        await leases.aclose()
        info = await nc.jetstream().stream_info(f"KV_{KV_LEASES}", subjects_filter=f"$KV.{KV_LEASES}.{key}.*")
    finally:
        await nc.close()
    assert LEASE_TTL_S * 0.8 < waited < LEASE_TTL_S + 2
    assert not info.state.subjects  # released by deleting its own revision: no tombstone left


async def test_idle_leases_are_given_back_to_a_replica_that_wants_them_through_notices(servers) -> None:  # type: ignore[no-untyped-def]
    conns = [await nats.connect(servers.nats_url) for _ in range(2)]
    holder = leases_on(conns[0], reuse_idle_s=30)  # would keep its idle lease for good
    waiter = leases_on(conns[1], watched_poll_s=30)  # would not poll in time
    key = batch_key("http://notice.example/v1", "b-notice")
    stream = f"KV_{KV_LEASES}"
    subjects_filter = f"$KV.{KV_LEASES}.{key}.*"
    try:
        for _ in range(3):  # back to back: one claim, the idle lease reused
            async with holder.hold(key, 1):
                pass
        kept = await conns[0].jetstream().stream_info(stream, subjects_filter=subjects_filter)
        started = time.monotonic()
        async with waiter.hold(key, 1):  # wanted -> the holder gives it back -> freed -> claimed
            waited = time.monotonic() - started
        await holder.aclose()
        await waiter.aclose()
        info = await conns[0].jetstream().stream_info(stream, subjects_filter=subjects_filter)
    finally:
        for nc in conns:
            await nc.close()
    assert kept.state.subjects == {f"$KV.{KV_LEASES}.{key}.0": 1}
    assert waited < 1.0
    assert not info.state.subjects
