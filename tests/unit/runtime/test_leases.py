"""Slot leases against an in-memory store that behaves like the KV bucket (atomic create,
compare-and-set, delete by revision, max-age expiry); several SharedLeases on one store are
several replicas."""

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

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
        self.conflicts = 0  # creates to refuse as if another holder won the race
        self.unavailable = 0  # calls to fail as if the broker were down
        self.create_delay_s = 0.0

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
        self._broker()
        found = self._live(name)
        if found and found[0] == revision:
            del self.values[name]

    async def taken(self, key: str) -> set[str]:
        self.scans += 1
        self._broker()
        return {n for n in list(self.values) if n.rsplit(".", 1)[0] == key and self._live(n)}


def replica(store: FakeStore) -> SharedLeases:
    return SharedLeases(store, ttl_s=store.ttl_s, holder="test")


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
