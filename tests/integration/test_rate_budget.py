"""Two replicas sharing one endpoint's budget through NATS KV stay under its limit together."""

import asyncio
import secrets
import time

import nats
import pytest

from contracts.topology import KV_RATES
from services.runtime.models.rate_budget import Limit, RateBudget

pytestmark = pytest.mark.integration


async def replicas(servers, limit: Limit, n: int = 2) -> tuple[list[RateBudget], list[nats.NATS]]:  # type: ignore[no-untyped-def]
    endpoint = f"http://model-{secrets.token_hex(3)}.test/v1"
    conns = [await nats.connect(servers.nats_url) for _ in range(n)]
    budgets = []
    for nc in conns:
        js = nc.jetstream()

        async def kv(js=js):  # type: ignore[no-untyped-def]
            return await js.key_value(KV_RATES)

        budgets.append(RateBudget(kv, endpoint, limit))
    return budgets, conns


async def test_requests_per_minute_hold_across_replicas(servers) -> None:  # type: ignore[no-untyped-def]
    budgets, conns = await replicas(servers, Limit(rpm=600))  # 10 a second, bursts of 10
    stamps: list[float] = []

    async def call(budget: RateBudget) -> None:
        await budget.acquire(0)
        stamps.append(time.monotonic())

    started = time.monotonic()
    await asyncio.gather(*(call(b) for b in budgets for _ in range(20)))
    elapsed = time.monotonic() - started
    for nc in conns:
        await nc.close()
    assert len(stamps) == 40
    assert elapsed >= 2.5  # 40 calls at 10/s after a burst of 10: about 3 s, whoever makes them
    for t in stamps:  # no one-second window holds more than the burst plus a second of budget
        assert sum(1 for u in stamps if t <= u < t + 1.0) <= 21


async def test_tokens_per_minute_hold_across_replicas(servers) -> None:  # type: ignore[no-untyped-def]
    budgets, conns = await replicas(servers, Limit(tpm=600_000))  # 10,000 tokens a second
    started = time.monotonic()
    await asyncio.gather(*(b.acquire(2_000) for b in budgets for _ in range(10)))  # 40,000 tokens
    elapsed = time.monotonic() - started
    for nc in conns:
        await nc.close()
    assert elapsed >= 2.5  # (40,000 - a 10,000 burst) / 10,000 per second
