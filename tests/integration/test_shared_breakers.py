"""Two replicas (two ChatClients, each on its own NATS connection) sharing one breaker through the
KV bucket `evalbus_breakers`: one sees the failures and opens, the other opens without a call."""

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import nats
import pytest

from contracts.topology import KV_BREAKERS
from services.runtime.models.client import ChatClient, ModelCallError
from services.runtime.models.shared_breaker import KvBreakerStore, SharedBreakers
from tests.scripted_model import Reply, ok, scripted_server

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "hi"}]


@dataclass
class Replica:
    client: ChatClient
    sharing: SharedBreakers
    reported: list[tuple[str, str]]


@asynccontextmanager
async def replicas(nats_url: str, service: str, n: int = 2) -> AsyncIterator[list[Replica]]:
    conns = [await nats.connect(nats_url) for _ in range(n)]
    made: list[Replica] = []
    tasks = []
    for nc in conns:
        js = nc.jetstream()

        async def kv(js=js):  # type: ignore[no-untyped-def]
            return await js.key_value(KV_BREAKERS)

        reported: list[tuple[str, str]] = []
        sharing = SharedBreakers(KvBreakerStore(kv), service)
        client = ChatClient(
            endpoint_concurrency=4,
            retry_base_s=0.01,
            retry_max_s=0.05,
            breaker_fail_max=3,
            breaker_reset_s=1.0,
            on_breaker_change=lambda ep, old, new, reported=reported: reported.append((old, new)),
            breaker_sharing=sharing,
        )
        tasks.append(asyncio.get_running_loop().create_task(sharing.watch()))
        made.append(Replica(client, sharing, reported))
    try:
        yield made
    finally:
        for task in tasks:
            task.cancel()
        for r in made:
            await r.client.aclose()
        for nc in conns:
            await nc.close()


async def until(check, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_one_replica_opening_protects_the_other(servers, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="evalbus")
    service = f"svc-{secrets.token_hex(3)}"  # keys of its own in the shared bucket
    async with scripted_server(ok()) as model, replicas(servers.nats_url, service) as (a, b):
        opts = model.opts(max_retries=0)
        await b.client.complete(MSGS, opts, batch_id="b1", batch_limit=4, tags={})  # b knows the endpoint
        model.replies = [Reply(500)]
        for _ in range(3):
            with pytest.raises(ModelCallError):
                await a.client.complete(MSGS, opts, batch_id="b1", batch_limit=4, tags={})
        assert a.client.breakers[model.base_url].state == "open"
        calls_by_b = sum(1 for s in model.seen) - 3
        await until(lambda: b.client.breakers[model.base_url].state == "open")  # without a call of its own
        assert len(model.seen) - 3 == calls_by_b == 1
        await until(lambda: a.reported == [("closed", "open")])
        assert b.reported == []  # the opening is reported once, by the replica that made it

        # While open, b's calls wait out the shared pause (no request), then one probe closes it.
        model.replies = [ok()]
        started = time.monotonic()
        done = await b.client.complete(MSGS, opts, batch_id="b1", batch_limit=4, tags={})
        assert done.text == "hello" and time.monotonic() - started > 0.5
        await until(lambda: a.client.breakers[model.base_url].state == "closed")
        assert sorted(a.reported + b.reported) == sorted(
            [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "evalbus.breaker"]
    assert any("old=closed new=open failures=3 by=local" in line for line in lines)
    assert any("old=closed new=open" in line and "by=replica:" in line for line in lines)


async def test_a_replica_started_during_an_opening_starts_open(servers) -> None:  # type: ignore[no-untyped-def]
    service = f"svc-{secrets.token_hex(3)}"
    async with scripted_server(Reply(500)) as model:
        async with replicas(servers.nats_url, service, n=1) as (a,):
            for _ in range(3):
                with pytest.raises(ModelCallError):
                    await a.client.complete(MSGS, model.opts(max_retries=0), batch_id="b1", batch_limit=4, tags={})
            await until(lambda: a.reported == [("closed", "open")])
        async with replicas(servers.nats_url, service, n=1) as (late,):
            await asyncio.sleep(0.3)  # its watch reads the bucket
            model.replies = [ok()]
            seen = len(model.seen)
            task = asyncio.get_running_loop().create_task(
                late.client.complete(MSGS, model.opts(max_retries=0), batch_id="b1", batch_limit=4, tags={})
            )
            await asyncio.sleep(0.2)
            assert len(model.seen) == seen and not task.done()  # it waits out what is left of the pause
            assert (await asyncio.wait_for(task, 5)).text == "hello"
