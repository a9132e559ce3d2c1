"""A rate budget per model endpoint (requests and tokens per minute) shared by every replica of
every service that calls it: a token bucket in the NATS KV bucket `evalbus_rates`, changed only
by compare-and-set, so four chat-runners and two judges together stay under one provider limit.

Each process leases up to `lease_s` worth of budget at a time, so the KV sees a few updates a
second rather than one per call; a crashed process loses at most its unused lease.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects


@dataclass(frozen=True)
class Limit:
    rpm: float | None = None  # requests per minute
    tpm: float | None = None  # tokens per minute


class RateBudget:
    def __init__(
        self, kv: Callable[[], Awaitable[KeyValue]], endpoint: str, limit: Limit, lease_s: float = 0.25
    ) -> None:
        self._kv = kv
        self._key = f"rate.{subjects.endpoint_token(endpoint)}"
        self._rps = (limit.rpm or 0) / 60
        self._tps = (limit.tpm or 0) / 60
        self._lease_s = lease_s
        self._req = 0.0  # leased and not yet spent
        self._tok = 0.0
        self._lock = asyncio.Lock()

    def _caps(self) -> tuple[float, float]:
        # Bursts up to one second of budget (at least one request, at least one large call).
        return max(1.0, self._rps), max(8192.0, self._tps)

    async def acquire(self, tokens: int) -> None:
        """Wait until one request and `tokens` tokens fit the shared budget, then spend them."""
        async with self._lock:  # one lease refill at a time per process
            while not self._fits(tokens):
                wait = await self._lease(tokens)
                if wait > 0:
                    await asyncio.sleep(wait)
            if self._rps:
                self._req -= 1
            if self._tps:
                self._tok -= tokens

    def _fits(self, tokens: int) -> bool:
        return (not self._rps or self._req >= 1) and (not self._tps or self._tok >= tokens)

    async def _lease(self, tokens: int) -> float:
        """Move budget from the shared bucket to this process; returns how long to wait if none."""
        kv = await self._kv()
        cap_r, cap_t = self._caps()
        try:
            entry = await kv.get(self._key)
            state = orjson.loads(entry.value or b"{}")
            revision: int | None = entry.revision
        except KeyNotFoundError:
            state, revision = {"req": cap_r, "tok": cap_t, "t": time.time()}, None
        now = time.time()
        elapsed = max(0.0, now - float(state["t"]))
        req = min(cap_r, float(state["req"]) + elapsed * self._rps)
        tok = min(cap_t, float(state["tok"]) + elapsed * self._tps)
        need_r = max(0.0, 1 - self._req) if self._rps else 0.0
        need_t = max(0.0, tokens - self._tok) if self._tps else 0.0
        if (self._rps and req < need_r) or (self._tps and tok < need_t):
            short_r = (need_r - req) / self._rps if self._rps else 0.0
            short_t = (need_t - tok) / self._tps if self._tps else 0.0
            return max(short_r, short_t, 0.01)
        take_r = min(req, max(need_r, self._rps * self._lease_s)) if self._rps else 0.0
        take_t = min(tok, max(need_t, self._tps * self._lease_s)) if self._tps else 0.0
        value = orjson.dumps({"req": req - take_r, "tok": tok - take_t, "t": now})
        try:
            if revision is None:
                await kv.create(self._key, value)
            else:
                await kv.update(self._key, value, last=revision)
        except KeyWrongLastSequenceError:
            return 0.0  # another process moved first: read again
        self._req += take_r
        self._tok += take_t
        return 0.0
