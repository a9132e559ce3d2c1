"""Caps on model calls in flight that hold across every replica of every service.

A cap of N on a key (an endpoint, or a batch on an endpoint) is N slot keys `<key>.<i>` in the
NATS KV bucket `evalbus_leases`. A call holds one slot: it claims a free one with an atomic
create (expected last revision 0), renews it by compare-and-set on its revision while the call
runs, and releases it by deleting exactly that revision. The bucket's max age is the lease TTL,
so the slots of a holder that crashed (or stalled past the TTL) come back on their own.

A local semaphore per key sits in front, so one process never asks for more than the cap, and
one coroutine per key and process claims at a time, so waiting costs one scan per process
rather than one per waiting call. Waiting claimants poll with jittered, bounded backoff (a slot
given back by their own process wakes them at once).
`LocalLeases` is the same cap inside one process (unit tests, a client without a broker).
"""

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import nats.errors
import nats.js.errors
import orjson
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from contracts import subjects

log = logging.getLogger("evalbus.leases")

# Waiting for a slot: sleep between these bounds (jitter), the upper one doubling per empty scan.
WAIT_MIN_S = 0.005
WAIT_FIRST_MAX_S = 0.020
WAIT_MAX_S = 0.080
STORE_RETRY_MAX_S = 1.0  # the bucket unreachable: retry at most this far apart


def endpoint_key(base_url: str) -> str:
    """The cap of every call to one endpoint URL, whichever service makes it."""
    return f"ep.{subjects.endpoint_token(base_url)}"


def batch_key(base_url: str, batch_id: str) -> str:
    """The cap of one batch's calls (chat and judge alike) to one endpoint URL."""
    return f"batch.{subjects.endpoint_token(base_url)}.{batch_id}"


class Leases(Protocol):
    def hold(self, key: str, limit: int) -> AbstractAsyncContextManager[None]:
        """Wait until fewer than `limit` holders hold `key`, and hold it for the block."""
        ...

    async def aclose(self) -> None: ...


@dataclass
class _Gate:
    """One key in this process: the semaphore in front and the slots this process holds."""

    limit: int
    sem: asyncio.Semaphore
    claiming: asyncio.Lock = field(default_factory=asyncio.Lock)
    held: set[int] = field(default_factory=set)  # including slots still being released
    freed: asyncio.Event = field(default_factory=asyncio.Event)  # this process just gave a slot back

    def idle(self) -> bool:
        return self.sem._value == self.limit and not self.sem._waiters and not self.held


class _Gates:
    """Gates by key, replaced when a key's limit changes and dropped when idle, so a long-running
    service does not keep one per batch it ever saw."""

    def __init__(self) -> None:
        self._gates: dict[str, _Gate] = {}

    def get(self, key: str, limit: int) -> _Gate:
        gate = self._gates.get(key)
        if gate is None or gate.limit != limit:
            gate = self._gates[key] = _Gate(limit, asyncio.Semaphore(limit))
        return gate

    def drop_if_idle(self, key: str, gate: _Gate) -> None:
        # No await between the check and the delete, so no other call can slip in.
        if self._gates.get(key) is gate and gate.idle():
            del self._gates[key]

    def __len__(self) -> int:
        return len(self._gates)


class LocalLeases:
    """The cap inside this process only."""

    def __init__(self) -> None:
        self.gates = _Gates()

    @asynccontextmanager
    async def hold(self, key: str, limit: int) -> AsyncIterator[None]:
        gate = self.gates.get(key, limit)
        try:
            async with gate.sem:
                yield
        finally:
            self.gates.drop_if_idle(key, gate)

    async def aclose(self) -> None:
        return None


class SlotTaken(Exception):
    """The slot key exists at another revision (someone holds it, or took it after it expired)."""


class StoreUnavailable(Exception):
    """The lease bucket did not answer (broker down, timeout)."""


class SlotStore(Protocol):
    """The few KV operations a lease needs (a fake in unit tests)."""

    async def create(self, name: str, value: bytes) -> int:
        """Write `name` if it has no value; its revision. SlotTaken if it has one."""
        ...

    async def renew(self, name: str, value: bytes, revision: int) -> int:
        """Rewrite `name` if still at `revision` (restarting its TTL); the new revision, or SlotTaken."""
        ...

    async def remove(self, name: str, revision: int) -> None:
        """Delete `name` if still at `revision`; nothing if it changed or is gone."""
        ...

    async def taken(self, key: str) -> set[str]:
        """Names of the slots of `key` that exist now."""
        ...


_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


class KvSlotStore:
    """SlotStore on the JetStream KV bucket (opened on first use)."""

    def __init__(self, js: Callable[[], JetStreamContext], bucket: str) -> None:
        self._js = js
        self._bucket = bucket
        self._stream = f"KV_{bucket}"
        self._prefix = f"$KV.{bucket}."
        self._kv: KeyValue | None = None

    async def _open(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js().key_value(self._bucket)
        return self._kv

    async def create(self, name: str, value: bytes) -> int:
        try:
            # update(last=0), not create(): create reads the key again after a conflict (in
            # case it holds a tombstone), and released slots leave none.
            return await (await self._open()).update(name, value, last=0)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise SlotTaken(name) from exc
        except _NATS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def renew(self, name: str, value: bytes, revision: int) -> int:
        try:
            return await (await self._open()).update(name, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError as exc:
            raise SlotTaken(name) from exc
        except _NATS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def remove(self, name: str, revision: int) -> None:
        try:
            # The revision is the message's stream sequence: deleting it cannot touch a later
            # holder's lease, and a lease already expired or replaced is simply not found.
            await self._js().delete_msg(self._stream, revision)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in (10037, 10043):  # no message found, sequence not found
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except _NATS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def taken(self, key: str) -> set[str]:
        try:
            info = await self._js().stream_info(self._stream, subjects_filter=f"{self._prefix}{key}.*")
        except _NATS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return {s.removeprefix(self._prefix) for s in (info.state.subjects or {})}


@dataclass(eq=False)
class _Lease:
    key: str
    slot: int
    revision: int
    written: float  # clock() when the holder last sent its write: the TTL runs from about then
    gate: _Gate
    renewing: asyncio.Task[None] | None = None
    released: bool = False

    @property
    def name(self) -> str:
        return f"{self.key}.{self.slot}"


def holder_id(service: str) -> str:
    """Who holds a slot, written in its value (for an operator reading the bucket)."""
    return f"{service}@{socket.gethostname()}:{os.getpid()}"


class SharedLeases:
    """The cap across processes, through a SlotStore."""

    def __init__(
        self,
        store: SlotStore,
        *,
        ttl_s: float,
        holder: str,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        # Renewed once a third of the TTL has passed: two renewals may be missed (a slow event
        # loop, a broker hiccup) before a live lease expires.
        self._renew_after_s = ttl_s / 3
        self._value = orjson.dumps({"holder": holder})
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.gates = _Gates()
        self._held: set[_Lease] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self.lost = 0  # leases that expired under a live call (their holder stalled past the TTL)

    @asynccontextmanager
    async def hold(self, key: str, limit: int) -> AsyncIterator[None]:
        gate = self.gates.get(key, limit)
        try:
            async with gate.sem:
                lease = await self._claim(key, limit, gate)
                try:
                    yield
                finally:
                    self._release(lease)
        finally:
            self.gates.drop_if_idle(key, gate)

    async def _claim(self, key: str, limit: int, gate: _Gate) -> _Lease:
        async with gate.claiming:
            free = [i for i in range(limit) if i not in gate.held]  # a first guess, before any scan
            empty_scans = 0
            while True:
                if free:
                    slot = free.pop(self._rng.randrange(len(free)))
                    try:
                        lease = await self._create(key, slot, gate)
                    except SlotTaken:
                        continue
                    except StoreUnavailable as exc:
                        log.warning("lease bucket unavailable while claiming %s: %s", key, exc)
                        await self._sleep(self._rng.uniform(WAIT_MIN_S, STORE_RETRY_MAX_S))
                        continue
                    self._keep(lease)
                    return lease
                try:
                    taken = await self._store.taken(key)
                except StoreUnavailable as exc:
                    log.warning("lease bucket unavailable while claiming %s: %s", key, exc)
                    await self._sleep(self._rng.uniform(WAIT_MIN_S, STORE_RETRY_MAX_S))
                    continue
                free = [i for i in range(limit) if i not in gate.held and f"{key}.{i}" not in taken]
                if not free:
                    upper = min(WAIT_MAX_S, WAIT_FIRST_MAX_S * 2**empty_scans)
                    empty_scans += 1
                    # A slot this process gives back ends the wait at once; others' are polled for.
                    gate.freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gate.freed.wait(), self._rng.uniform(WAIT_MIN_S, upper))

    async def _create(self, key: str, slot: int, gate: _Gate) -> _Lease:
        name = f"{key}.{slot}"
        written = self._clock()
        # Shielded: a caller cancelled while the create is on the wire must not leave behind a
        # lease nobody releases (it would block a slot for a whole TTL).
        task = asyncio.ensure_future(self._store.create(name, self._value))
        try:
            revision = await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._release_orphan(name, t))
            raise
        gate.held.add(slot)
        return _Lease(key, slot, revision, written, gate)

    def _release_orphan(self, name: str, task: asyncio.Future[int]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._spawn(self._quiet_remove(name, task.result()))

    def _keep(self, lease: _Lease) -> None:
        self._held.add(lease)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    def _release(self, lease: _Lease) -> None:
        """Give the slot back in the background: the caller's answer need not wait for it, and a
        cancelled caller still releases. Until it is done this process does not try that slot."""
        lease.released = True
        self._held.discard(lease)
        self._spawn(self._remove(lease))

    async def _remove(self, lease: _Lease) -> None:
        try:
            if lease.renewing is not None:  # its revision is about to change
                await asyncio.wait([lease.renewing])
            await self._quiet_remove(lease.name, lease.revision)
        finally:
            lease.gate.held.discard(lease.slot)
            lease.gate.freed.set()
            self.gates.drop_if_idle(lease.key, lease.gate)

    async def _quiet_remove(self, name: str, revision: int) -> None:
        try:
            await self._store.remove(name, revision)
        except StoreUnavailable as exc:  # it expires on its own within the TTL
            log.info("lease %s not released (%s); it expires within %.0f s", name, exc, self._ttl_s)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)  # a reference, or the task may be collected before it runs
        task.add_done_callback(self._background.discard)

    async def _renew_forever(self) -> None:
        while self._held:
            await self._sleep(self._renew_after_s / 2)
            now = self._clock()
            for lease in list(self._held):
                due = now - lease.written >= self._renew_after_s
                if due and not lease.released and (lease.renewing is None or lease.renewing.done()):
                    lease.renewing = asyncio.get_running_loop().create_task(self._renew(lease))

    async def _renew(self, lease: _Lease) -> None:
        written = self._clock()
        try:
            lease.revision = await self._store.renew(lease.name, self._value, lease.revision)
            lease.written = written
            return
        except StoreUnavailable as exc:
            log.warning("lease %s not renewed (%s); retrying", lease.name, exc)
            return
        except SlotTaken:
            pass
        # It expired under a live call: take it back if nobody else did, else the cap may be
        # exceeded by this call until it ends (it is not cut short: the answer may be billed).
        try:
            lease.revision = await self._store.create(lease.name, self._value)
            lease.written = written
            log.warning("lease %s expired under a live call and was taken back", lease.name)
        except (SlotTaken, StoreUnavailable):
            self.lost += 1
            self._held.discard(lease)
            lease.released = True
            log.warning("lease %s expired under a live call and was taken by another holder", lease.name)

    async def aclose(self) -> None:
        """Stop renewing and wait briefly for releases under way (the rest expire)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
