"""Caps on model calls in flight that hold across every replica of every service.

A cap of N on a key (an endpoint, or a batch on an endpoint) is N slot keys `<key>.<i>` in the
NATS KV bucket `evalbus_leases`. A process holds a slot through a lease: it claims a free one
with an atomic create (expected last revision 0), renews it by compare-and-set on its revision
while it holds it, and gives it back by deleting exactly that revision. The bucket's max age is
the lease TTL, so the slots of a holder that crashed (or stalled past the TTL) come back on their
own.

A lease outlives the call that claimed it, so that a process making a steady stream of calls
pays no KV operation per call: a call that ends hands its lease to the next call of the same
process for that key (one waiting, or one arriving within `reuse_idle_s`), and only a lease idle
that long is given back. An idle lease is still a KV key, renewed like any other, so it counts
against the cap like a call in flight. Other replicas get their turn: a lease is reused for at
most `reuse_max_s` after its claim (`wanted_reuse_s` while another process wants the key), then
given back at its next release, and its slot is left to the others for `yield_s`.

A local semaphore per key sits in front, so one process never asks for more than the cap, and
one coroutine per key and process claims at a time, so waiting costs one scan per process
rather than one per waiting call. Processes announce on core NATS (not stored) a slot they gave
back (`LEASE_NOTICE_PREFIX.freed.<key>`: waiters try it at once, and poll only as a fallback, as
a notice can be missed and a crashed holder's lease expires without one) and that they wait
(`.wanted.<key>`: the others give back their idle leases at once).
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
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.topology import LEASE_NOTICE_PREFIX

log = logging.getLogger("evalbus.leases")

# Waiting for a slot without freed notices: sleep between these bounds (jitter), the upper one
# doubling per empty scan.
WAIT_MIN_S = 0.005
WAIT_FIRST_MAX_S = 0.020
WAIT_MAX_S = 0.080
# Waiting with freed notices: a notice wakes the waiter; the poll only catches a missed notice
# or a crashed holder's lease expiring.
WAIT_WATCHED_S = 0.25
STORE_RETRY_MAX_S = 1.0  # the bucket unreachable: retry at most this far apart
REUSE_IDLE_S = 0.1  # a lease no call of this process used for this long is given back
REUSE_MAX_S = 0.5  # a lease is reused for at most this long after its claim
WANTED_REUSE_S = 0.05  # ... while another process wants its key
WANTED_S = 0.5  # a key is wanted this long after the last notice (twice the waiters' fallback poll)
WANT_EVERY_S = 0.1  # a waiter repeats its notice at most this often
# ... then this process leaves its slot to others for this long: it learns of the free slot
# first, so its own waiting calls would win it back every time.
YIELD_S = 0.02


def endpoint_key(base_url: str) -> str:
    """The cap of every call to one endpoint URL, whichever service makes it."""
    return f"ep.{subjects.endpoint_token(base_url)}"


def batch_key(base_url: str, batch_id: str) -> str:
    """The cap of one batch's calls (chat and judge alike) to one endpoint URL."""
    return f"batch.{subjects.endpoint_token(base_url)}.{batch_id}"


def notice_subject(kind: str, key: str) -> str:
    """`kind` is "freed" or "wanted"; "*" for both."""
    return f"{LEASE_NOTICE_PREFIX}.{kind}.{key}"


class Leases(Protocol):
    def hold(self, key: str, limit: int) -> AbstractAsyncContextManager[None]:
        """Wait until fewer than `limit` holders hold `key`, and hold it for the block."""
        ...

    async def aclose(self) -> None: ...


class Watch(Protocol):
    async def stop(self) -> None: ...


@dataclass(eq=False)
class _Gate:
    """One key in this process: the semaphore in front and the slots this process holds."""

    limit: int
    sem: asyncio.Semaphore
    claiming: asyncio.Lock = field(default_factory=asyncio.Lock)
    held: set[int] = field(default_factory=set)  # including idle leases and slots still being released
    idle_leases: list["_Lease"] = field(default_factory=list)  # held, renewed, used by no call
    freed: asyncio.Event = field(default_factory=asyncio.Event)  # a slot may have become free
    notified: set[int] = field(default_factory=set)  # slots other processes announced free
    claimers: int = 0  # calls of this process waiting for a slot past the semaphore
    wanted_until: float = 0.0  # clock() until which another process waits for this key
    next_want: float = 0.0  # clock() from which this process may announce it waits again
    yielded: dict[int, float] = field(default_factory=dict)  # slot -> clock() until which it is left to others
    watch: Watch | None = None
    watch_tried: bool = False

    def signal(self) -> None:
        self.freed.set()

    def take(self) -> "_Lease | None":
        """The lease used last (the others age out and are given back), or None."""
        if not self.idle_leases:
            return None
        lease = self.idle_leases.pop()
        if lease.reaper is not None:
            lease.reaper.cancel()
            lease.reaper = None
        return lease

    def usable(self, slot: int, now: float) -> bool:
        """Not held by this process, nor just left to others."""
        if slot in self.held:
            return False
        until = self.yielded.get(slot)
        if until is None:
            return True
        if until <= now:
            del self.yielded[slot]
            return True
        return False

    def waited_for(self) -> bool:
        """A call of this process waits for this key."""
        return self.claimers > 0 or bool(self.sem._waiters)

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

    def current(self, key: str, gate: _Gate) -> bool:
        return self._gates.get(key) is gate

    def drop_if_idle(self, key: str, gate: _Gate) -> bool:
        # No await between the check and the delete, so no other call can slip in.
        if self._gates.get(key) is gate and gate.idle():
            del self._gates[key]
            return True
        return False

    def all(self) -> list[_Gate]:
        return list(self._gates.values())

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
        """Delete `name` if still at `revision` (nothing if it changed or is gone), then tell the
        watchers of its key that the slot is free."""
        ...

    async def taken(self, key: str) -> set[str]:
        """Names of the slots of `key` that exist now."""
        ...

    async def want(self, key: str, holder: str) -> None:
        """Tell the watchers of `key` that `holder` waits for one of its slots."""
        ...

    async def watch(self, key: str, on_freed: Callable[[int], None], on_wanted: Callable[[str], None]) -> Watch | None:
        """Call `on_freed(slot)` when a slot of `key` is removed and `on_wanted(holder)` when a
        holder waits for one, until stopped; None if this store cannot (waiters poll)."""
        ...


_NATS_ERRORS = (nats.errors.Error, nats.js.errors.Error, TimeoutError, OSError)


class _Subscription:
    def __init__(self, sub: Subscription) -> None:
        self._sub = sub

    async def stop(self) -> None:
        with contextlib.suppress(*_NATS_ERRORS):
            await self._sub.unsubscribe()


class KvSlotStore:
    """SlotStore on the JetStream KV bucket (opened on first use); freed notices on core NATS
    when given the connection (`nc`), else waiters poll."""

    def __init__(
        self, js: Callable[[], JetStreamContext], bucket: str, *, nc: Callable[[], Client] | None = None
    ) -> None:
        self._js = js
        self._nc = nc
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
            # It leaves no message behind, which is why a KV watch would not see it: the
            # notice below is what wakes the waiters.
            await self._js().delete_msg(self._stream, revision)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in (10037, 10043):  # no message found, sequence not found
                raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except _NATS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if self._nc is not None:
            key, slot = name.rsplit(".", 1)
            with contextlib.suppress(*_NATS_ERRORS):  # a lost notice costs a waiter one poll
                await self._nc().publish(notice_subject("freed", key), slot.encode())

    async def taken(self, key: str) -> set[str]:
        try:
            info = await self._js().stream_info(self._stream, subjects_filter=f"{self._prefix}{key}.*")
        except _NATS_ERRORS as exc:
            raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        return {s.removeprefix(self._prefix) for s in (info.state.subjects or {})}

    async def want(self, key: str, holder: str) -> None:
        if self._nc is not None:
            with contextlib.suppress(*_NATS_ERRORS):  # a lost notice: the others' idle leases expire
                await self._nc().publish(notice_subject("wanted", key), holder.encode())

    async def watch(self, key: str, on_freed: Callable[[int], None], on_wanted: Callable[[str], None]) -> Watch | None:
        if self._nc is None:
            return None
        kind_at = LEASE_NOTICE_PREFIX.count(".") + 1

        async def got(msg: Msg) -> None:
            kind = msg.subject.split(".", kind_at + 1)[kind_at]
            if kind == "wanted":
                on_wanted(msg.data.decode(errors="replace"))
            elif kind == "freed":
                with contextlib.suppress(ValueError):
                    on_freed(int(msg.data))

        try:
            return _Subscription(await self._nc().subscribe(notice_subject("*", key), cb=got))
        except _NATS_ERRORS as exc:
            log.warning("not watching freed slots of %s (%s); polling", key, exc)
            return None


@dataclass(eq=False)
class _Lease:
    key: str
    slot: int
    revision: int
    written: float  # clock() when the holder last sent its write: the TTL runs from about then
    gate: _Gate
    claimed: float  # clock() when it was claimed: reused until `reuse_max_s` after
    renewing: asyncio.Task[None] | None = None
    reaper: asyncio.TimerHandle | None = None  # gives it back once idle for `reuse_idle_s`
    released: bool = False  # given back, or lost to another holder
    yielding: bool = False  # given back for others' turn: its slot is left to them for a moment

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
        reuse_idle_s: float = REUSE_IDLE_S,
        reuse_max_s: float = REUSE_MAX_S,
        watched_poll_s: float = WAIT_WATCHED_S,
        yield_s: float = YIELD_S,
        wanted_reuse_s: float = WANTED_REUSE_S,
    ) -> None:
        self._store = store
        self._ttl_s = ttl_s
        # Renewed once a third of the TTL has passed: two renewals may be missed (a slow event
        # loop, a broker hiccup) before a live lease expires.
        self._renew_after_s = ttl_s / 3
        self._holder = f"{holder}#{id(self):x}"  # tells this instance's own notices apart
        self._value = orjson.dumps({"holder": holder})
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._reuse_idle_s = reuse_idle_s
        self._reuse_max_s = reuse_max_s
        self._watched_poll_s = watched_poll_s
        self._yield_s = yield_s
        self._wanted_reuse_s = wanted_reuse_s
        self.gates = _Gates()
        self._held: set[_Lease] = set()  # renewed: in use or idle
        self._background: set[asyncio.Task[None]] = set()
        self._renewer: asyncio.Task[None] | None = None
        self._closing = False
        self.lost = 0  # leases that expired under a live call (their holder stalled past the TTL)

    @asynccontextmanager
    async def hold(self, key: str, limit: int) -> AsyncIterator[None]:
        gate = self.gates.get(key, limit)
        try:
            async with gate.sem:
                lease = gate.take() or await self._claim(key, limit, gate)
                try:
                    yield
                finally:
                    self._release(lease)
        finally:
            self._drop_if_idle(key, gate)

    async def _claim(self, key: str, limit: int, gate: _Gate) -> _Lease:
        gate.claimers += 1
        try:
            return await self._claim_slot(key, limit, gate)
        finally:
            gate.claimers -= 1

    async def _claim_slot(self, key: str, limit: int, gate: _Gate) -> _Lease:
        if not gate.watch_tried:  # before the first claim: holders hear who wants, waiters what is freed
            gate.watch_tried = True
            gate.watch = await self._store.watch(
                key, lambda slot: self._announced(gate, slot), lambda holder: self._wanted(gate, holder)
            )
        async with gate.claiming:
            free = [i for i in range(limit) if gate.usable(i, self._clock())]  # a first guess, before any scan
            scan_due = not free
            scanned = False
            empty_scans = 0
            while True:
                handed = gate.take()  # given back by a call of this process while this one waited
                if handed is not None:
                    return handed
                now = self._clock()
                if gate.notified:  # freed by this process or announced free by another: no scan needed
                    free += [i for i in gate.notified if i < limit and gate.usable(i, now) and i not in free]
                    gate.notified.clear()
                if free:
                    slot = free.pop(self._rng.randrange(len(free)))
                    try:
                        lease = await self._create(key, slot, gate)
                    except SlotTaken:
                        scan_due = not scanned  # a guess: ask the bucket before waiting
                        continue
                    except StoreUnavailable as exc:
                        log.warning("lease bucket unavailable while claiming %s: %s", key, exc)
                        await self._sleep(self._rng.uniform(WAIT_MIN_S, STORE_RETRY_MAX_S))
                        continue
                    self._keep(lease)
                    return lease
                if scan_due:
                    try:
                        taken = await self._store.taken(key)
                    except StoreUnavailable as exc:
                        log.warning("lease bucket unavailable while claiming %s: %s", key, exc)
                        await self._sleep(self._rng.uniform(WAIT_MIN_S, STORE_RETRY_MAX_S))
                        continue
                    scan_due, scanned = False, True
                    now = self._clock()
                    free = [i for i in range(limit) if gate.usable(i, now) and f"{key}.{i}" not in taken]
                    continue  # what was handed over or announced during the scan comes first
                if gate.watch is not None and now >= gate.next_want:  # the others: give back what you keep idle
                    gate.next_want = now + WANT_EVERY_S
                    await self._store.want(key, self._holder)
                    continue
                # Woken by a lease handed over or a slot announced free; the scan only on a timeout,
                # for a notice that was missed or a lease that expired.
                gate.freed.clear()
                if gate.watch is not None:
                    wait_s = self._watched_poll_s
                else:
                    wait_s = self._rng.uniform(WAIT_MIN_S, min(WAIT_MAX_S, WAIT_FIRST_MAX_S * 2**empty_scans))
                    empty_scans += 1
                try:
                    await asyncio.wait_for(gate.freed.wait(), wait_s)
                except TimeoutError:
                    scan_due = True

    @staticmethod
    def _announced(gate: _Gate, slot: int) -> None:
        gate.notified.add(slot)
        gate.signal()

    def _wanted(self, gate: _Gate, holder: str) -> None:
        if holder == self._holder:
            return
        gate.wanted_until = self._clock() + WANTED_S
        while gate.idle_leases:  # kept for calls of this process that are not there: theirs now
            lease = gate.take()
            assert lease is not None
            lease.yielding = True
            self._give_back(lease)

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
        return _Lease(key, slot, revision, written, gate, claimed=written)

    def _release_orphan(self, name: str, task: asyncio.Future[int]) -> None:
        if not task.cancelled() and task.exception() is None:
            self._spawn(self._quiet_remove(name, task.result()))

    def _keep(self, lease: _Lease) -> None:
        self._held.add(lease)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    def _release(self, lease: _Lease) -> None:
        """The call is done with its lease: keep it for the next call of this process (a waiting
        one takes it at once), or give it back if it is due."""
        gate = lease.gate
        if lease.released:  # lost to another holder during the call: only our bookkeeping is left
            self._spawn(self._remove(lease))
            return
        now = self._clock()
        if gate.wanted_until > now:  # another process waits: keep it only for a call of ours that waits too
            keep = now - lease.claimed < self._wanted_reuse_s and gate.waited_for()
        else:
            keep = now - lease.claimed < self._reuse_max_s
        if keep and not self._closing and self.gates.current(lease.key, gate):
            gate.idle_leases.append(lease)
            lease.reaper = asyncio.get_running_loop().call_later(self._reuse_idle_s, self._reap, lease)
            gate.signal()
            return
        lease.yielding = gate.wanted_until > now and not self._closing  # nobody to leave it to otherwise
        self._give_back(lease)

    def _reap(self, lease: _Lease) -> None:
        lease.reaper = None
        gate = lease.gate
        if lease in gate.idle_leases:
            gate.idle_leases.remove(lease)
            self._give_back(lease)

    def _give_back(self, lease: _Lease) -> None:
        """Delete the lease in the background: the caller's answer need not wait for it, and a
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
            gate = lease.gate
            gate.held.discard(lease.slot)
            if lease.yielding:  # left to the others; this process's claimers may try it after that
                gate.yielded[lease.slot] = self._clock() + self._yield_s
                asyncio.get_running_loop().call_later(self._yield_s, self._announced, gate, lease.slot)
            else:
                self._announced(gate, lease.slot)
            self._drop_if_idle(lease.key, gate)

    def _drop_if_idle(self, key: str, gate: _Gate) -> None:
        if self.gates.drop_if_idle(key, gate) and gate.watch is not None:
            self._spawn(gate.watch.stop())
            gate.watch = None

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
        # It expired (a stalled process): take it back if nobody else did, else the cap may be
        # exceeded by a live call until it ends (it is not cut short: the answer may be billed).
        try:
            lease.revision = await self._store.create(lease.name, self._value)
            lease.written = written
            log.warning("lease %s expired while held and was taken back", lease.name)
        except (SlotTaken, StoreUnavailable):
            self._held.discard(lease)
            lease.released = True
            gate = lease.gate
            if lease in gate.idle_leases:  # no call had it: nothing exceeded, forget it
                gate.idle_leases.remove(lease)
                if lease.reaper is not None:
                    lease.reaper.cancel()
                self._spawn(self._remove(lease))
            else:
                self.lost += 1
            log.warning("lease %s expired while held and was taken by another holder", lease.name)

    async def aclose(self) -> None:
        """Give idle leases back, stop renewing and watching, and wait briefly for releases
        under way (the rest expire)."""
        self._closing = True
        for lease in list(self._held):
            if lease in lease.gate.idle_leases:
                lease.gate.idle_leases.remove(lease)
                if lease.reaper is not None:
                    lease.reaper.cancel()
                self._give_back(lease)
        for gate in self.gates.all():
            if gate.watch is not None:
                self._spawn(gate.watch.stop())
                gate.watch = None
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._background:
            await asyncio.wait(list(self._background), timeout=2.0)
