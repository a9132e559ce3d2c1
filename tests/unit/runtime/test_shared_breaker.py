"""Replicas sharing one breaker through a store (an in-memory compare-and-set store with watches)."""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from services.runtime.models.breaker import ProviderBreaker
from services.runtime.models.shared_breaker import SharedBreakers, SharedState, Stored

ENDPOINT = "http://127.0.0.1:8089/v1"
KEY = "chat-runner.127_0_0_1_8089_v1"


class Unhealthy(Exception):
    pass


@dataclass
class FakeStore:
    """Compare-and-set by revision, like a KV bucket, and watchers fed every write."""

    values: dict[str, Stored] = field(default_factory=dict)
    revision: int = 0
    watchers: list[asyncio.Queue[tuple[str, Stored | None]]] = field(default_factory=list)
    down: bool = False
    writes: int = 0

    async def read(self, key: str) -> Stored | None:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("store down")
        return self.values.get(key)

    async def write(self, key: str, state: SharedState, revision: int | None) -> bool:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("store down")
        current = self.values.get(key)
        if (current.revision if current else None) != revision:
            return False
        self.revision += 1
        self.writes += 1
        stored = self.values[key] = Stored(state, self.revision)
        for queue in self.watchers:
            queue.put_nowait((key, stored))
        return True

    async def watch(self, prefix: str) -> AsyncIterator[tuple[str, Stored | None]]:
        queue: asyncio.Queue[tuple[str, Stored | None]] = asyncio.Queue()
        for key, stored in self.values.items():
            queue.put_nowait((key, stored))
        self.watchers.append(queue)
        while True:
            key, stored = await queue.get()
            if key.startswith(prefix + "."):
                yield key, stored


@dataclass
class Replica:
    sharing: SharedBreakers
    breaker: ProviderBreaker
    reported: list[tuple[str, str]]
    calls: int = 0


def replica(store: FakeStore, name: str, *, reset_s: float = 0.2, probe_lease_s: float | None = None) -> Replica:
    sharing = SharedBreakers(store, "chat-runner", replica=name, probe_lease_s=probe_lease_s)
    reported: list[tuple[str, str]] = []
    breaker = ProviderBreaker(
        ENDPOINT,
        fail_max=3,
        reset_s=reset_s,
        counts=lambda e: isinstance(e, Unhealthy),
        on_change=lambda ep, old, new: reported.append((old, new)),
        sharing=sharing,
    )
    return Replica(sharing, breaker, reported)


@contextmanager
def watching(*replicas: Replica) -> Iterator[None]:
    tasks = [asyncio.get_running_loop().create_task(r.sharing.watch()) for r in replicas]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def trip(r: Replica) -> None:
    async def fail() -> None:
        r.calls += 1
        raise Unhealthy("503")

    for _ in range(3):
        with pytest.raises(Unhealthy):
            await r.breaker.call(fail)
    await settle()


async def test_one_replica_opening_opens_the_other_without_a_call_and_is_reported_once() -> None:
    store = FakeStore()
    a, b = replica(store, "a"), replica(store, "b")
    with watching(a, b):
        await settle()
        await trip(a)
        assert a.breaker.state == "open" and b.breaker.state == "open"
        assert b.calls == 0
        assert a.reported == [("closed", "open")] and b.reported == []
        assert store.values[KEY].state.state == "open" and store.values[KEY].state.by == "a"


async def test_a_replica_that_starts_later_starts_open() -> None:
    store = FakeStore()
    a = replica(store, "a", reset_s=5)
    with watching(a):
        await trip(a)
    late = SharedBreakers(store, "chat-runner", replica="late")
    with watching(Replica(late, a.breaker, [])):  # the watch fills what the late replica knows
        await settle()
    breaker = ProviderBreaker(ENDPOINT, fail_max=3, reset_s=5, counts=lambda e: True, sharing=late)
    assert breaker.state == "open"
    assert 4.0 < breaker._open_until - time.monotonic() <= 5.0  # what is left of the pause, not a new one


async def test_the_first_timer_claims_the_probe_and_its_success_closes_every_replica() -> None:
    store = FakeStore()
    a, b = replica(store, "a"), replica(store, "b")
    running = 0
    overlapped = False

    async def ok() -> str:
        nonlocal running, overlapped
        running += 1
        overlapped |= running > 1
        await asyncio.sleep(0.05)
        running -= 1
        return "ok"

    with watching(a, b):
        await settle()
        await trip(a)
        first = await asyncio.gather(a.breaker.call(ok), b.breaker.call(ok))
        await settle()
    assert first == ["ok", "ok"]
    assert not overlapped  # one probe across both replicas, then the other caller
    assert a.breaker.state == "closed" and b.breaker.state == "closed"
    reported = a.reported + b.reported
    assert sorted(reported) == sorted([("closed", "open"), ("open", "half_open"), ("half_open", "closed")])
    assert store.values[KEY].state.state == "closed"


async def test_a_failed_probe_opens_every_replica_for_a_new_pause() -> None:
    store = FakeStore()
    a, b = replica(store, "a", reset_s=0.1), replica(store, "b", reset_s=0.1)

    async def fail() -> None:
        raise Unhealthy("503")

    with watching(a, b):
        await settle()
        await trip(a)
        opened_at = store.values[KEY].state.opened_at
        await asyncio.sleep(0.12)
        with pytest.raises(Unhealthy):
            await b.breaker.call(fail)  # b's timer fired: b probes, and fails
        await settle()
        shared = store.values[KEY].state
        assert shared.state == "open" and shared.by == "b" and shared.opened_at > opened_at
        assert a.breaker.state == "open" and a.breaker._open_until - time.monotonic() > 0.05
    assert b.reported == [("open", "half_open"), ("half_open", "open")]


async def test_replicas_tripping_together_report_one_opening() -> None:
    store = FakeStore()
    a, b = replica(store, "a"), replica(store, "b")
    with watching(a, b):
        await settle()
        await asyncio.gather(trip(a), trip(b))
        await settle()
    assert len(a.reported + b.reported) == 1


async def test_a_stale_probe_claim_is_taken_over() -> None:
    store = FakeStore()
    now = time.time()
    store.values[KEY] = Stored(SharedState("half_open", now - 10, now - 5, "crashed"), 1)
    store.revision = 1
    a = replica(store, "a", reset_s=0.2, probe_lease_s=1.0)
    with watching(a):
        await settle()
        assert a.breaker.state == "open"  # someone probes: wait for its outcome
        assert await a.breaker.call(lambda: asyncio.sleep(0, "ok")) == "ok"
        await settle()
    assert a.breaker.state == "closed" and store.values[KEY].state.by == "a"


async def test_a_fresh_probe_claim_of_another_replica_is_waited_for() -> None:
    store = FakeStore()
    now = time.time()
    store.values[KEY] = Stored(SharedState("half_open", now - 1, now, "other"), 1)
    store.revision = 1
    a = replica(store, "a", probe_lease_s=5.0)
    with watching(a):
        await settle()
        assert await a.sharing.claim_probe(a.breaker) == ("wait", pytest.approx(5.0, abs=0.2))
        waiting = asyncio.get_running_loop().create_task(a.breaker.call(lambda: asyncio.sleep(0, "ok")))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        closed = SharedState("closed", now - 1, time.time(), "other")
        assert await store.write(KEY, closed, 1)  # the other replica's probe succeeded
        assert await asyncio.wait_for(waiting, 1) == "ok"
    assert a.breaker.state == "closed" and a.reported == []


async def test_without_the_store_each_replica_decides_alone() -> None:
    store = FakeStore(down=True)
    a = replica(store, "a", reset_s=0.05)
    await trip(a)
    assert a.reported == [("closed", "open")]  # reported, as a breaker per process did
    await asyncio.sleep(0.06)
    assert await a.breaker.call(lambda: asyncio.sleep(0, "ok")) == "ok"
    await settle()
    assert a.breaker.state == "closed"
    assert a.reported == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


async def test_garbage_in_the_store_is_ignored() -> None:
    assert SharedState.decode(b"not json") is None
    assert SharedState.decode(b'{"state": "melted", "opened_at": 1, "since": 1, "by": "x"}') is None
    state = SharedState("open", 1.5, 2.5, "r")
    assert SharedState.decode(state.encode()) == state
