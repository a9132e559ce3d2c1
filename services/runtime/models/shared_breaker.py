"""Breaker state shared by the replicas of a service, in the NATS KV bucket `evalbus_breakers`.

One key per service and endpoint (`<service>.<endpoint token>`) holds the shared state: open
(with when it opened), half_open (with who probes, since when) or closed. Every replica watches
its service's keys:
- a replica whose own calls trip its breaker writes `open`; the others open theirs for what is
  left of the pause, without a call of their own;
- when a replica's pause is over it claims the probe by compare-and-set (open -> half_open): the
  first timer to fire wins; the others wait for the probe's outcome (closed or open again). A
  claim older than the probe lease (the prober died) may be taken over;
- only the replica that changed the key reports the change (a `BreakerStateChanged` event), so
  an opening is counted once, not once per replica.

Failures are still counted per replica (the threshold is one replica's consecutive unhealthy
answers): only openings, probes and closings are shared. The key's times are wall-clock and
every pause is clamped to [0, reset], so clock skew between hosts shortens or lengthens a
pause by at most the skew and never blocks an endpoint for good. When the bucket cannot be
reached, a replica decides alone, as a breaker per process did: sharing only adds protection.
"""

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from services.runtime.models.breaker import Claim, ProviderBreaker

log = logging.getLogger("evalbus.breaker")

_STATES = ("open", "half_open", "closed")
_CONTENTION = 5  # compare-and-set attempts before deciding alone


@dataclass(frozen=True)
class SharedState:
    state: str  # open | half_open | closed
    opened_at: float  # wall clock (epoch seconds) of the latest opening
    since: float  # wall clock of this state
    by: str  # the replica that set it

    def encode(self) -> bytes:
        return orjson.dumps({"state": self.state, "opened_at": self.opened_at, "since": self.since, "by": self.by})

    @classmethod
    def decode(cls, raw: bytes | None) -> "SharedState | None":
        """The state in a key's value, or None for anything else (never trusted blindly)."""
        try:
            data = orjson.loads(raw or b"")
            state = cls(str(data["state"]), float(data["opened_at"]), float(data["since"]), str(data["by"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return state if state.state in _STATES else None


@dataclass(frozen=True)
class Stored:
    state: SharedState
    revision: int


class BreakerStore(Protocol):
    """Compare-and-set storage with a watch (KvBreakerStore; a fake in unit tests)."""

    async def read(self, key: str) -> Stored | None: ...

    async def write(self, key: str, state: SharedState, revision: int | None) -> bool:
        """Store `state` if the key is still at `revision` (None: absent); False if it moved."""
        ...

    def watch(self, prefix: str) -> AsyncIterator[tuple[str, Stored | None]]:
        """The keys under `prefix` as they are, then every change (None: deleted or unreadable)."""
        ...


class KvBreakerStore:
    def __init__(self, kv: Callable[[], Awaitable[KeyValue]]) -> None:
        self._kv = kv

    async def read(self, key: str) -> Stored | None:
        try:
            entry = await (await self._kv()).get(key)
        except KeyNotFoundError:
            return None
        state = SharedState.decode(entry.value)
        return None if state is None or entry.revision is None else Stored(state, entry.revision)

    async def write(self, key: str, state: SharedState, revision: int | None) -> bool:
        kv = await self._kv()
        try:
            if revision is None:
                await kv.create(key, state.encode())
            else:
                await kv.update(key, state.encode(), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def watch(self, prefix: str) -> AsyncIterator[tuple[str, Stored | None]]:
        watcher = await (await self._kv()).watch(f"{prefix}.>")
        try:
            async for entry in watcher:
                if entry is None or not entry.key:
                    continue  # the marker after the initial values
                state = None if entry.operation else SharedState.decode(entry.value)
                yield entry.key, None if state is None or entry.revision is None else Stored(state, entry.revision)
        finally:
            await watcher.stop()


def replica_id() -> str:
    """This process among the service's replicas (host, pid and a nonce: pids repeat)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class SharedBreakers:
    """The `Sharing` of one service's breakers in one process."""

    def __init__(
        self,
        store: BreakerStore,
        service: str,
        *,
        replica: str | None = None,
        probe_lease_s: float | None = None,
        op_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.service = service
        self.replica = replica or replica_id()
        self._probe_lease_s = probe_lease_s  # None: one reset period
        self._op_timeout_s = op_timeout_s
        self._clock = clock
        self._attached: dict[str, list[ProviderBreaker]] = defaultdict(list)
        self._known: dict[str, Stored] = {}

    def key(self, endpoint: str) -> str:
        return f"{self.service}.{subjects.endpoint_token(endpoint)}"

    def attach(self, breaker: ProviderBreaker) -> None:
        key = self.key(breaker.endpoint)
        self._attached[key].append(breaker)
        known = self._known.get(key)
        if known is not None:
            self._follow(breaker, known.state)

    async def watch(self) -> None:
        """Follow the service's keys forever (watching again after any error)."""
        delay = 1.0
        while True:
            try:
                async for key, stored in self._store.watch(self.service):
                    delay = 1.0
                    self._apply(key, stored)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching shared breakers failed (%r); retrying in %.0f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    def _apply(self, key: str, stored: Stored | None) -> None:
        if stored is None:
            self._known.pop(key, None)
            return
        self._known[key] = stored
        for breaker in self._attached.get(key, ()):
            self._follow(breaker, stored.state)

    def _follow(self, breaker: ProviderBreaker, shared: SharedState) -> None:
        if shared.by == self.replica:
            return  # our own write, seen again
        remaining = 0.0
        if shared.state == "open":
            remaining = min(breaker.reset_s, max(0.0, shared.opened_at + breaker.reset_s - self._clock()))
        breaker.follow(shared.state, remaining, shared.by)

    async def _read(self, key: str) -> Stored | None:
        async with asyncio.timeout(self._op_timeout_s):
            return await self._store.read(key)

    async def _write(self, key: str, state: SharedState, revision: int | None) -> bool:
        async with asyncio.timeout(self._op_timeout_s):
            return await self._store.write(key, state, revision)

    async def claim_probe(self, breaker: ProviderBreaker) -> Claim:
        """Whether this replica probes now (its pause is over): a compare-and-set open -> half_open."""
        key = self.key(breaker.endpoint)
        lease = self._probe_lease_s if self._probe_lease_s is not None else breaker.reset_s
        try:
            for _ in range(_CONTENTION):
                stored = await self._read(key)
                if stored is None:
                    return ("probe", 0.0)  # nothing shared: decide alone
                shared, now = stored.state, self._clock()
                if shared.state == "closed":
                    return ("closed", 0.0)
                if shared.state == "open":
                    due = shared.opened_at + breaker.reset_s - now
                    if due > 0:  # opened again since this replica's timer started
                        return ("wait", min(due, breaker.reset_s))
                elif shared.by != self.replica:
                    held = now - shared.since
                    if held < lease:  # another replica probes: wait for its outcome
                        return ("wait", min(lease, lease - held))
                mine = SharedState("half_open", shared.opened_at, now, self.replica)
                if await self._write(key, mine, stored.revision):
                    return ("probe", 0.0)
        except (Exception, TimeoutError) as exc:
            log.warning("breaker endpoint=%s: shared state unreachable (%r); deciding alone", breaker.endpoint, exc)
            return ("probe", 0.0)
        return ("wait", 0.05)  # others keep moving it: look again shortly

    async def transition(self, breaker: ProviderBreaker, new: str) -> bool:
        """Share this replica's own opening or closing; True if it changed the shared state (and
        so reports it), False if the others already had it (an opening another replica made)."""
        key = self.key(breaker.endpoint)
        try:
            for _ in range(_CONTENTION):
                stored = await self._read(key)
                now = self._clock()
                shared = stored.state if stored else None
                fresh_elsewhere = (
                    shared is not None
                    and shared.state == "open"
                    and shared.by != self.replica
                    and now < shared.opened_at + breaker.reset_s
                )
                if new == "open":
                    if fresh_elsewhere:
                        assert shared is not None
                        self._follow(breaker, shared)  # pause until the other's opening ends
                        return False
                    target = SharedState("open", now, now, self.replica)
                elif new == "closed":
                    if shared is None:
                        return True  # never shared (the bucket was unreachable): report alone
                    if shared.state == "closed":
                        return False
                    if fresh_elsewhere:  # another replica opened it after this one's probe began
                        self._follow(breaker, shared)
                        return False
                    target = SharedState("closed", shared.opened_at, now, self.replica)
                else:
                    return True  # half_open is shared by the claim
                if await self._write(key, target, stored.revision if stored else None):
                    return True
        except (Exception, TimeoutError) as exc:
            log.warning("breaker endpoint=%s: shared state unreachable (%r); deciding alone", breaker.endpoint, exc)
        return True
