"""7. Concurrency leases: what the cap shared across replicas (services/runtime/models/leases.py)
costs per model call, on an embedded nats-server like the stack's."""

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import psutil
from nats.aio.client import Client

from bench.report import figure
from bench.scenarios.common import RunBudget, median, say
from contracts.topology import KV_LEASES, LEASE_TTL_S
from infra.embedded import NatsServer
from infra.nats_topology import apply_topology
from services.runtime.models.leases import (
    KvSlotStore,
    Leases,
    LocalLeases,
    SharedLeases,
    Watch,
    batch_key,
    endpoint_key,
)

URL = "http://model.bench/v1"
BATCH_CAP, ENDPOINT_CAP = 3, 64
CONTENDED_TASKS, CONTENDED_HOLD_S = 16, 0.002  # per replica; two replicas


class _Occupancy:
    """Slot-seconds in use: the time integral of the calls holding their leases."""

    def __init__(self) -> None:
        self.in_use = 0
        self.slot_s = 0.0
        self._since = time.perf_counter()

    def change(self, by: int) -> None:
        now = time.perf_counter()
        self.slot_s += self.in_use * (now - self._since)
        self._since, self.in_use = now, self.in_use + by


async def _calls(
    leases: Leases, n: int, batch_id: str, hold_s: float = 0.0, occupancy: _Occupancy | None = None
) -> None:
    """`n` model calls' worth of leases: the batch's slot, then the endpoint's, as ChatClient takes them."""
    for _ in range(n):
        async with leases.hold(batch_key(URL, batch_id), BATCH_CAP), leases.hold(endpoint_key(URL), ENDPOINT_CAP):
            if occupancy is not None:
                occupancy.change(+1)
            if hold_s:
                await asyncio.sleep(hold_s)
            if occupancy is not None:
                occupancy.change(-1)


class _Counted:
    """A SlotStore that counts the KV operations (a watch costs none per call)."""

    def __init__(self, store: KvSlotStore) -> None:
        self._store = store
        self.ops = 0

    async def create(self, name: str, value: bytes) -> int:
        self.ops += 1
        return await self._store.create(name, value)

    async def renew(self, name: str, value: bytes, revision: int) -> int:
        self.ops += 1
        return await self._store.renew(name, value, revision)

    async def remove(self, name: str, revision: int) -> None:
        self.ops += 1
        await self._store.remove(name, revision)

    async def taken(self, key: str) -> set[str]:
        self.ops += 1
        return await self._store.taken(key)

    async def want(self, key: str, holder: str) -> None:
        await self._store.want(key, holder)

    async def watch(self, key: str, on_freed: Callable[[int], None], on_wanted: Callable[[str], None]) -> Watch | None:
        return await self._store.watch(key, on_freed, on_wanted)


def _replica(nc: Client, *, reuse: bool = True) -> tuple[SharedLeases, _Counted]:
    js = nc.jetstream()
    store = _Counted(KvSlotStore(lambda: js, KV_LEASES, nc=lambda: nc))
    if reuse:
        return SharedLeases(store, ttl_s=LEASE_TTL_S, holder="bench"), store
    # Every lease given back when its call ends, and its slot usable again at once.
    return SharedLeases(store, ttl_s=LEASE_TTL_S, holder="bench", reuse_idle_s=0, reuse_max_s=0, yield_s=0), store


async def _timed(leases: Leases, n: int, batch_id: str, server: psutil.Process) -> dict[str, float]:
    cpu0, server0, t0 = time.process_time(), server.cpu_times(), time.perf_counter()
    await _calls(leases, n, batch_id)
    await leases.aclose()  # the releases still on their way count too
    wall, cpu, server1 = time.perf_counter() - t0, time.process_time() - cpu0, server.cpu_times()
    server_cpu = (server1.user + server1.system) - (server0.user + server0.system)
    return {"wall_us": wall / n * 1e6, "client_cpu_us": cpu / n * 1e6, "server_cpu_us": server_cpu / n * 1e6}


async def _trial(nats_url: str, server: psutil.Process, n: int, trial: int) -> dict[str, Any]:
    await apply_topology(nats_url)
    conns = [await nats.connect(nats_url) for _ in range(2)]
    try:
        local = await _timed(LocalLeases(), n, f"local-{trial}", server)
        # A steady stream of calls from one process: each call reuses the leases the one before held.
        alone, alone_store = _replica(conns[0])
        kv = await _timed(alone, n, f"alone-{trial}", server)
        kv["kv_ops"] = alone_store.ops / n
        # Every lease claimed and given back per call: what a call costs when none is there to reuse.
        fresh, fresh_store = _replica(conns[0], reuse=False)
        cold = await _timed(fresh, n, f"cold-{trial}", server)
        cold["kv_ops"] = fresh_store.ops / n
        # Two replicas, 16 calls each always waiting, on a batch cap of 3: the cap's cost when it binds.
        replicas = [_replica(nc) for nc in conns]
        per_task = max(1, n // (10 * CONTENDED_TASKS))
        finished = [0.0, 0.0]  # when each replica's last call ended
        occupancy = _Occupancy()

        async def contended(r: int) -> None:
            await _calls(replicas[r][0], per_task, f"contended-{trial}", CONTENDED_HOLD_S, occupancy)
            finished[r] = max(finished[r], time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(contended(r) for r in range(2) for _ in range(CONTENDED_TASKS)))
        wall = time.perf_counter() - t0
        for leases, _ in replicas:
            await leases.aclose()
        calls = per_task * CONTENDED_TASKS * len(replicas)
        bound = BATCH_CAP / CONTENDED_HOLD_S
        contended_ops = sum(store.ops for _, store in replicas) / calls
    finally:
        for nc in conns:
            await nc.close()
    return {
        "local": local,
        "kv": kv,
        "cold": cold,
        "overhead_us": kv["wall_us"] - local["wall_us"],
        "cold_overhead_us": cold["wall_us"] - local["wall_us"],
        "leases_per_s": 2 * 1e6 / kv["wall_us"],  # two leases (batch, endpoint) per call
        "cold_leases_per_s": 2 * 1e6 / cold["wall_us"],
        "contended_calls_per_s": calls / wall,
        "contended_use": calls / wall / bound,
        "contended_occupancy": occupancy.slot_s / (wall * BATCH_CAP),
        "contended_kv_ops": contended_ops,
        "contended_finish_ratio": min(finished) / max(finished),  # a starved replica finishes late, alone
    }


def leases(budget: RunBudget) -> dict[str, Any]:
    n = budget.n(5_000)
    trials: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="evalbus-bench-leases-") as tmp:
        server = NatsServer(Path(tmp) / "nats").start()
        try:
            assert server.proc is not None
            proc = psutil.Process(server.proc.pid)
            for i in range(budget.repeats):
                trial = asyncio.run(_trial(server.url, proc, n, i))
                trials.append(trial)
                say(
                    f"  [leases-{i + 1}] {trial['overhead_us']:.0f} µs per call over a local semaphore "
                    f"({trial['kv']['kv_ops']:.3f} KV ops; {trial['cold_overhead_us']:.0f} µs with no lease to reuse); "
                    f"contended {trial['contended_use']:.0%} of the cap used, {trial['contended_kv_ops']:.2f} KV ops/call"
                )
        finally:
            server.stop()

    def col(*path: str) -> list[float]:
        out = []
        for t in trials:
            value: Any = t
            for p in path:
                value = value[p]
            out.append(float(value))
        return out

    overhead = median(col("overhead_us")) or 0.0
    return {
        "title": "7. Concurrency leases: the shared cap's cost per model call",
        "setup": (
            f"{n:,} sequential calls, each taking a batch slot (cap {BATCH_CAP}) and an endpoint slot (cap "
            f"{ENDPOINT_CAP}) and giving both back, against a fresh nats-server, with leases reused and with none "
            f"reused; lease TTL {LEASE_TTL_S:g} s; then two "
            f"replicas x {CONTENDED_TASKS} calls always waiting on the batch cap, each holding "
            f"{CONTENDED_HOLD_S * 1000:g} ms"
        ),
        "params": {"n": n, "batch_cap": BATCH_CAP, "endpoint_cap": ENDPOINT_CAP, "ttl_s": LEASE_TTL_S},
        "figures": [
            figure("overhead per call (KV leases - local semaphore)", "µs", col("overhead_us"), digits=0),
            figure("per call with KV leases", "µs wall", col("kv", "wall_us"), digits=0),
            figure("KV operations per call", "ops", col("kv", "kv_ops"), digits=3),
            figure("per call with a local semaphore", "µs wall", col("local", "wall_us"), digits=1),
            figure("client CPU per call", "µs", col("kv", "client_cpu_us"), digits=0),
            figure("nats-server CPU per call", "µs", col("kv", "server_cpu_us"), digits=0),
            figure("lease acquire+release", "leases/s", col("leases_per_s"), digits=0),
            figure("no lease to reuse: overhead per call", "µs", col("cold_overhead_us"), digits=0),
            figure("no lease to reuse: client CPU per call", "µs", col("cold", "client_cpu_us"), digits=0),
            figure("no lease to reuse: nats-server CPU per call", "µs", col("cold", "server_cpu_us"), digits=0),
            figure("no lease to reuse: KV operations per call", "ops", col("cold", "kv_ops"), digits=2),
            figure("contended: calls", "calls/s", col("contended_calls_per_s"), digits=0),
            figure("contended: share of the cap in use", "", col("contended_use"), digits=2),
            figure("contended: slots held by a call (measured)", "", col("contended_occupancy"), digits=2),
            figure("contended: KV operations per call", "ops", col("contended_kv_ops"), digits=2),
            figure("contended: earlier replica's end / later one's", "", col("contended_finish_ratio"), digits=2),
        ],
        "tables": [],
        "notes": [
            f"A steady stream of calls from one process costs ~{overhead:.0f} µs per call over a local semaphore: "
            "each call takes the leases the call before it held (kept while idle for 0.1 s, renewed, given back "
            "after 0.5 s of reuse so other replicas get a turn), so KV operations per call are near 0.",
            "No lease to reuse (every lease claimed and given back per call): two creates on the way in, two "
            "deletes and their freed notices in the background.",
            "Contended: a call that ends hands its lease to a call of its own process that waits; a slot given back "
            "is announced on core NATS, so waiters of the other replica try it at once (polling every 0.25 s only "
            "as a fallback), and a waiting replica announces it wants the key, so the others give back their idle "
            "leases at once and their busy ones after 50 ms of reuse. The share of the cap in use is calls/s over cap / hold "
            "time (a 2 ms sleep lasts longer on a loaded machine, so it reads low); the slots held by a call is "
            "measured (1.0 = never idle); the replicas' end times near each other (ratio near 1) mean neither starved.",
        ],
        "runs": trials,
    }
