"""Slot leases against an in-memory store that behaves like the KV bucket (atomic create,
compare-and-set, delete by revision, max-age expiry) and announces removed slots like the freed
notices; several SharedLeases on one store are several replicas."""

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import orjson
import pytest

from services.runtime.models.client import ChatClient
from services.runtime.models.leases import LocalLeases, SharedLeases, SlotTaken, StoreUnavailable
from tests.scripted_model import Reply, ScriptedModel, ok_body, scripted_server

TTL = 0.3


class FakeStore:
    """The bucket: name -> (revision, written at); a value older than the TTL is gone."""

    def __init__(self, ttl_s: float = TTL) -> None:
        self.ttl_s = ttl_s
        self.values: dict[str, tuple[int, float]] = {}
        self.revision = 0
        self.scans = 0
        self.creates = 0
        self.renewals = 0
        self.removes = 0
        self.conflicts = 0  # creates to refuse as if another holder won the race
        self.unavailable = 0  # calls to fail as if the broker were down
        self.create_delay_s = 0.0
        self.watchers: list[FakeWatch] = []
        self.can_watch = True
        self.drop_notices = False  # as if every freed notice were lost
        self.drop_wanted = False  # ... every wanted notice
        self.wants = 0

    def _live(self, name: str) -> tuple[int, float] | None:
        found = self.values.get(name)
        if found and time.monotonic() - found[1] >= self.ttl_s:
            del self.values[name]
            return None
        return found

    def _broker(self) -> None:
        if self.unavailable:
            self.unavailable -= 1
            raise StoreUnavailable("broker down")

    def _write(self, name: str) -> int:
        self.revision += 1
        self.values[name] = (self.revision, time.monotonic())
        return self.revision

    async def create(self, name: str, value: bytes) -> int:
        self.creates += 1
        if self.create_delay_s:
            await asyncio.sleep(self.create_delay_s)
        self._broker()
        if self.conflicts:
            self.conflicts -= 1
            self._write(name)  # the winner of the race
            raise SlotTaken(name)
        if self._live(name):
            raise SlotTaken(name)
        return self._write(name)

    async def renew(self, name: str, value: bytes, revision: int) -> int:
        self.renewals += 1
        self._broker()
        found = self._live(name)
        if not found or found[0] != revision:
            raise SlotTaken(name)
        return self._write(name)

    async def remove(self, name: str, revision: int) -> None:
        self.removes += 1
        self._broker()
        found = self._live(name)
        if found and found[0] == revision:
            del self.values[name]
        key, slot = name.rsplit(".", 1)
        for watch in list(self.watchers):
            if watch.key == key and not self.drop_notices:
                # Delivered later, as a message from the broker would be.
                asyncio.get_running_loop().call_soon(watch.on_freed, int(slot))

    async def want(self, key: str, holder: str) -> None:
        self.wants += 1
        for watch in list(self.watchers):
            if watch.key == key and not self.drop_wanted:
                asyncio.get_running_loop().call_soon(watch.on_wanted, holder)

    async def watch(
        self, key: str, on_freed: Callable[[int], None], on_wanted: Callable[[str], None]
    ) -> "FakeWatch | None":
        if not self.can_watch:
            return None
        watch = FakeWatch(self, key, on_freed, on_wanted)
        self.watchers.append(watch)
        return watch

    def ops(self) -> int:
        """KV operations so far (notices cost none)."""
        return self.creates + self.renewals + self.removes + self.scans

    async def taken(self, key: str) -> set[str]:
        self.scans += 1
        self._broker()
        return {n for n in list(self.values) if n.rsplit(".", 1)[0] == key and self._live(n)}


@dataclass(eq=False)
class FakeWatch:
    store: FakeStore
    key: str
    on_freed: Callable[[int], None]
    on_wanted: Callable[[str], None]

    async def stop(self) -> None:
        self.store.watchers.remove(self)


def replica(store: FakeStore, **reuse: float) -> SharedLeases:
    return SharedLeases(store, ttl_s=store.ttl_s, holder="test", **reuse)


class Peak:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    async def work(self, seconds: float) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.now -= 1


async def settle(*leases: SharedLeases) -> None:
    for lease in leases:
        await lease.aclose()  # waits for background releases


async def test_the_cap_holds_across_replicas_and_every_call_gets_its_turn() -> None:
    store = FakeStore()
    replicas = [replica(store), replica(store)]
    peak = Peak()

    async def call(leases: SharedLeases) -> None:
        async with leases.hold("batch.ep.b1", 3):
            await peak.work(0.01)

    await asyncio.gather(*(call(replicas[i % 2]) for i in range(30)))
    await settle(*replicas)
    assert peak.peak == 3 and peak.now == 0
    assert store.values == {}  # every slot given back


async def test_a_crashed_holders_slots_come_back_when_they_expire() -> None:
    store = FakeStore()
    for i in range(2):  # a holder that died: it never renews nor releases
        await store.create(f"ep.x.{i}", b"{}")
    leases = replica(store)
    started = time.monotonic()
    async with leases.hold("ep.x", 2):
        waited = time.monotonic() - started
    await settle(leases)
    assert TTL * 0.8 <= waited < TTL + 0.5
    assert store.scans < 30  # waited with backoff, not in a hot loop


async def test_a_live_lease_is_renewed_past_the_ttl() -> None:
    store = FakeStore()
    first, second = replica(store), replica(store)
    released_at: list[float] = []

    async def long_call() -> None:
        async with first.hold("ep.x", 1):
            await asyncio.sleep(TTL * 3)
        released_at.append(time.monotonic())

    holder = asyncio.create_task(long_call())
    await asyncio.sleep(0.02)
    async with second.hold("ep.x", 1):
        acquired = time.monotonic()
    await holder
    await settle(first, second)
    assert store.renewals >= 3
    assert acquired >= released_at[0] - 0.01  # never two holders of the one slot


async def test_cas_conflicts_and_an_unavailable_broker_are_retried() -> None:
    store = FakeStore()
    store.conflicts, store.unavailable = 2, 1
    leases = replica(store)
    async with leases.hold("ep.x", 3):
        assert len([n for n in store.values if n.startswith("ep.x.")]) == 3  # two won by others, one ours
    await settle(leases)
    assert store.creates >= 4


async def test_a_slot_is_released_when_the_call_raises() -> None:
    store = FakeStore()
    leases = replica(store)
    with pytest.raises(ValueError):
        async with leases.hold("ep.x", 1):
            raise ValueError("model call failed")
    await settle(leases)
    assert store.values == {}
    assert len(leases.gates) == 0  # the key is forgotten once idle


async def test_a_slot_is_released_when_the_call_is_cancelled() -> None:
    store = FakeStore()
    leases = replica(store)
    inside = asyncio.Event()

    async def call() -> None:
        async with leases.hold("ep.x", 1):
            inside.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(call())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle(leases)
    assert store.values == {}


async def test_a_claim_cancelled_on_the_wire_does_not_leave_its_lease_behind() -> None:
    store = FakeStore(ttl_s=30)  # so only a release can empty the bucket
    store.create_delay_s = 0.05
    leases = replica(store)

    async def call() -> None:
        async with leases.hold("ep.x", 1):
            await asyncio.sleep(60)

    task = asyncio.create_task(call())
    await asyncio.sleep(0.01)  # the create is on its way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.1)  # the create lands, then its orphan is removed
    await settle(leases)
    assert store.creates == 1 and store.values == {}


async def test_a_lease_taken_by_another_holder_after_a_stall_is_counted_lost() -> None:
    store = FakeStore(ttl_s=30)  # the other holder's lease outlives the test
    leases = SharedLeases(store, ttl_s=TTL, holder="test")
    async with leases.hold("ep.x", 1):
        name = next(iter(store.values))
        store.values[name] = (999, time.monotonic())  # another holder took it after it expired
        await asyncio.sleep(TTL)  # a renewal is due and fails
    await settle(leases)
    assert leases.lost == 1
    assert store.values[name][0] == 999  # releasing ours did not delete theirs


async def test_local_leases_cap_one_process_and_forget_idle_keys() -> None:
    leases = LocalLeases()
    peak = Peak()

    async def call() -> None:
        async with leases.hold("batch.ep.b1", 2):
            await peak.work(0.005)

    await asyncio.gather(*(call() for _ in range(8)))
    assert peak.peak == 2 and len(leases.gates) == 0


@pytest.fixture
async def slow_model() -> ScriptedModel:  # type: ignore[misc]
    async with scripted_server() as scripted:
        scripted.replies = [Reply(body=orjson.dumps(ok_body()), delay_s=0.02)]
        yield scripted


async def test_two_clients_sharing_leases_stay_under_the_batch_and_endpoint_caps(slow_model: ScriptedModel) -> None:
    store = FakeStore()
    make: Callable[[int], ChatClient] = lambda n: ChatClient(  # noqa: E731
        endpoint_concurrency=n, retry_base_s=0.01, retry_max_s=0.05, leases=replica(store)
    )
    async with AsyncExitStack() as stack:
        clients = [make(16), make(16)]
        for client in clients:
            stack.push_async_callback(client.aclose)
        calls = [
            clients[i % 2].complete(
                [{"role": "user", "content": "hi"}], slow_model.opts(), batch_id="b1", batch_limit=3, tags={}
            )
            for i in range(24)
        ]
        await asyncio.gather(*calls)
    assert slow_model.peak == 3  # the batch's cap, for both clients together
    assert store.values == {}
    slow_model.peak = 0
    tight = [make(2), make(2)]
    await asyncio.gather(
        *(
            tight[i % 2].complete(
                [{"role": "user", "content": "hi"}], slow_model.opts(), batch_id=f"b{i % 4}", batch_limit=3, tags={}
            )
            for i in range(16)
        )
    )
    for client in tight:
        await client.aclose()
    assert slow_model.peak == 2  # four batches of 3, held to the endpoint's cap of 2 for both clients


async def call_once(leases: SharedLeases, key: str = "ep.x", limit: int = 1, seconds: float = 0.0) -> None:
    async with leases.hold(key, limit):
        await asyncio.sleep(seconds)


async def test_back_to_back_calls_of_one_process_reuse_their_leases_with_no_kv_op() -> None:
    store = FakeStore(ttl_s=30)  # no renewal due during the test
    leases = replica(store)
    for _ in range(10):  # a batch's slot, then the endpoint's, as ChatClient takes them
        async with leases.hold("batch.ep.b1", 3), leases.hold("ep.x", 8):
            pass
        await asyncio.sleep(0.001)
    assert store.creates == 2 and store.ops() == 2  # claimed once, reused nine times
    assert len(store.values) == 2  # still held while idle: they count against the caps
    await settle(leases)
    assert store.values == {} and store.removes == 2


async def test_a_call_waiting_in_the_same_process_is_handed_the_lease() -> None:
    store = FakeStore(ttl_s=30)
    leases = replica(store)
    first_inside = asyncio.Event()
    handed_at: list[float] = []

    async def first() -> None:
        async with leases.hold("ep.x", 1):
            first_inside.set()
            await asyncio.sleep(0.05)
        handed_at.append(time.monotonic())

    async def second() -> None:
        await first_inside.wait()
        async with leases.hold("ep.x", 1):
            handed_at.append(time.monotonic())

    await asyncio.gather(first(), second())
    assert handed_at[1] - handed_at[0] < 0.02
    assert store.ops() == 1  # one create: the second call took the first one's lease
    await settle(leases)


async def test_a_claimer_waiting_for_other_replicas_takes_a_lease_its_own_process_frees() -> None:
    store = FakeStore(ttl_s=30)
    other, leases = replica(store), replica(store, watched_poll_s=10)  # no poll in time: only a handoff
    for_good = other.hold("ep.x", 2)  # another replica holds one slot of two throughout
    await for_good.__aenter__()
    first_inside = asyncio.Event()
    times: list[float] = []

    async def first() -> None:
        async with leases.hold("ep.x", 2):
            first_inside.set()
            await asyncio.sleep(0.05)
        times.append(time.monotonic())

    async def second() -> None:
        await first_inside.wait()
        async with leases.hold("ep.x", 2):  # passes the semaphore, then finds both slots taken
            times.append(time.monotonic())
            assert store.removes == 0 and len(store.values) == 2

    await asyncio.gather(first(), second())
    assert times[1] - times[0] < 0.02
    await settle(leases)
    assert len(store.values) == 1  # the other replica's
    await for_good.__aexit__(None, None, None)
    await settle(other)


async def test_an_idle_lease_is_given_back_after_the_grace() -> None:
    store = FakeStore(ttl_s=30)
    leases = replica(store, reuse_idle_s=0.05)
    await call_once(leases)
    assert len(store.values) == 1
    await asyncio.sleep(0.15)
    assert store.values == {} and store.removes == 1
    assert len(leases.gates) == 0  # the key is forgotten once its lease is given back
    await settle(leases)


async def test_an_idle_lease_counts_against_the_cap_and_is_renewed_until_given_back() -> None:
    store = FakeStore()  # TTL 0.3 s
    store.drop_wanted = True  # so only its grace ends it
    keeper = replica(store, reuse_idle_s=1.0)  # keeps its idle lease past the TTL
    waiter = replica(store, watched_poll_s=10)  # only a freed notice can wake it in time
    await call_once(keeper)
    released = time.monotonic()
    await call_once(waiter)
    waited = time.monotonic() - released
    await settle(keeper, waiter)
    assert 0.9 <= waited < 1.15  # the idle lease held the only slot until its grace ran out
    assert store.renewals >= 2  # and stayed alive past two TTLs while idle


async def test_an_idle_lease_is_given_back_at_once_when_another_replica_wants_it() -> None:
    store = FakeStore(ttl_s=30)
    keeper = replica(store, reuse_idle_s=10)
    waiter = replica(store, watched_poll_s=10)
    await call_once(keeper)
    started = time.monotonic()
    await call_once(waiter)
    waited = time.monotonic() - started
    assert waited < 0.05 and store.wants == 1
    started = time.monotonic()
    await call_once(keeper)  # and back: the waiter kept its lease idle, and gives it back when asked
    assert time.monotonic() - started < 0.05 and store.wants == 2
    await settle(keeper, waiter)
    assert store.values == {}


async def test_the_cap_holds_across_two_replicas_handing_leases_off() -> None:
    store = FakeStore()
    replicas = [replica(store, reuse_max_s=0.05), replica(store, reuse_max_s=0.05)]
    peak = Peak()
    done = [0, 0]

    async def call(r: int) -> None:
        async with replicas[r].hold("batch.ep.b1", 3):
            await peak.work(0.002)
        done[r] += 1

    await asyncio.gather(*(call(i % 2) for i in range(200)))
    await settle(*replicas)
    assert peak.peak == 3 and peak.now == 0
    assert done == [100, 100]
    assert store.creates < 100  # most calls took a lease handed over by their own process
    assert store.values == {}


async def test_a_busy_lease_is_given_back_after_a_while_when_another_replica_wants_it() -> None:
    store = FakeStore()
    busy = replica(store, reuse_max_s=60, wanted_reuse_s=0.05)
    other = replica(store, watched_poll_s=10)
    stop = asyncio.Event()

    async def stream() -> None:  # a call always waiting in `busy`: it would hand its lease on forever
        while not stop.is_set():
            await call_once(busy, seconds=0.005)

    streams = [asyncio.create_task(stream()) for _ in range(2)]
    await asyncio.sleep(0.02)
    started = time.monotonic()
    async with asyncio.timeout(5):
        await call_once(other)
    waited = time.monotonic() - started
    stop.set()
    await asyncio.gather(*streams)
    await settle(busy, other)
    assert waited < 0.2 and store.wants >= 1


async def test_a_waiter_in_another_process_is_woken_by_the_freed_notice() -> None:
    store = FakeStore(ttl_s=30)
    holder = replica(store, reuse_idle_s=0)  # gives its lease back as soon as the call ends
    waiter = replica(store, watched_poll_s=10)
    inside = asyncio.Event()
    released_at: list[float] = []

    async def hold() -> None:
        async with holder.hold("ep.x", 1):
            inside.set()
            await asyncio.sleep(0.1)
        released_at.append(time.monotonic())

    task = asyncio.create_task(hold())
    await inside.wait()
    await call_once(waiter)
    acquired = time.monotonic()
    await task
    await settle(holder, waiter)
    assert acquired - released_at[0] < 0.05
    assert store.scans <= 3 and store.watchers == []  # woken, not polling; unsubscribed once idle


async def test_a_missed_notice_is_caught_by_the_slow_poll() -> None:
    store = FakeStore(ttl_s=30)
    store.drop_notices = True
    holder = replica(store, reuse_idle_s=0)
    waiter = replica(store, watched_poll_s=0.1)
    inside = asyncio.Event()

    async def hold() -> None:
        async with holder.hold("ep.x", 1):
            inside.set()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(hold())
    await inside.wait()
    started = time.monotonic()
    await call_once(waiter)
    waited = time.monotonic() - started
    await task
    await settle(holder, waiter)
    assert 0.05 <= waited < 0.3


async def test_without_notices_waiters_poll_with_backoff() -> None:
    store = FakeStore(ttl_s=30)
    store.can_watch = False
    holder = replica(store, reuse_idle_s=0)
    waiter = replica(store, watched_poll_s=10)  # unused: there is no watch
    inside = asyncio.Event()

    async def hold() -> None:
        async with holder.hold("ep.x", 1):
            inside.set()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(hold())
    await inside.wait()
    started = time.monotonic()
    await call_once(waiter)
    waited = time.monotonic() - started
    await task
    await settle(holder, waiter)
    assert 0.05 <= waited < 0.2
