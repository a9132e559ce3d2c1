"""7. Concurrency leases: what the cap shared across replicas (services/runtime/models/leases.py)
costs per model call, on an embedded nats-server like the stack's."""

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import psutil

from bench.report import figure
from bench.scenarios.common import RunBudget, median, say
from contracts.topology import KV_LEASES, LEASE_TTL_S
from infra.embedded import NatsServer
from infra.nats_topology import apply_topology
from services.runtime.models.leases import KvSlotStore, Leases, LocalLeases, SharedLeases, batch_key, endpoint_key

URL = "http://model.bench/v1"
BATCH_CAP, ENDPOINT_CAP = 3, 64
CONTENDED_TASKS, CONTENDED_HOLD_S = 16, 0.002  # per replica; two replicas


async def _calls(leases: Leases, n: int, batch_id: str, hold_s: float = 0.0) -> None:
    """`n` model calls' worth of leases: the batch's slot, then the endpoint's, as ChatClient takes them."""
    for _ in range(n):
        async with leases.hold(batch_key(URL, batch_id), BATCH_CAP), leases.hold(endpoint_key(URL), ENDPOINT_CAP):
            if hold_s:
                await asyncio.sleep(hold_s)


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
        js = [nc.jetstream() for nc in conns]
        shared = [
            SharedLeases(
                KvSlotStore(lambda j=j: j, KV_LEASES, nc=lambda c=c: c),  # type: ignore[misc]
                ttl_s=LEASE_TTL_S,
                holder="bench",
            )
            for j, c in zip(js, conns, strict=True)
        ]
        local = await _timed(LocalLeases(), n, f"local-{trial}", server)
        kv = await _timed(shared[0], n, f"alone-{trial}", server)
        # Two replicas, 16 calls each always waiting, on a batch cap of 3: the cap's cost when it binds.
        replicas = [
            SharedLeases(
                KvSlotStore(lambda j=j: j, KV_LEASES, nc=lambda c=c: c),  # type: ignore[misc]
                ttl_s=LEASE_TTL_S,
                holder="bench",
            )
            for j, c in zip(js, conns, strict=True)
        ]
        per_task = max(1, n // (10 * CONTENDED_TASKS))
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                _calls(r, per_task, f"contended-{trial}", CONTENDED_HOLD_S)
                for r in replicas
                for _ in range(CONTENDED_TASKS)
            )
        )
        wall = time.perf_counter() - t0
        for r in replicas:
            await r.aclose()
        calls = per_task * CONTENDED_TASKS * len(replicas)
        bound = BATCH_CAP / CONTENDED_HOLD_S
    finally:
        for nc in conns:
            await nc.close()
    return {
        "local": local,
        "kv": kv,
        "overhead_us": kv["wall_us"] - local["wall_us"],
        "leases_per_s": 2 * 1e6 / kv["wall_us"],  # two leases (batch, endpoint) per call
        "contended_calls_per_s": calls / wall,
        "contended_use": calls / wall / bound,
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
                    f"  [leases-{i + 1}] {trial['overhead_us']:.0f} µs per call over a local semaphore; "
                    f"{trial['leases_per_s']:,.0f} leases/s; contended {trial['contended_use']:.0%} of the cap used"
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
            f"{ENDPOINT_CAP}) and giving both back, against a fresh nats-server; lease TTL {LEASE_TTL_S:g} s; then two "
            f"replicas x {CONTENDED_TASKS} calls always waiting on the batch cap, each holding "
            f"{CONTENDED_HOLD_S * 1000:g} ms"
        ),
        "params": {"n": n, "batch_cap": BATCH_CAP, "endpoint_cap": ENDPOINT_CAP, "ttl_s": LEASE_TTL_S},
        "figures": [
            figure("overhead per call (KV leases - local semaphore)", "µs", col("overhead_us"), digits=0),
            figure("per call with KV leases", "µs wall", col("kv", "wall_us"), digits=0),
            figure("per call with a local semaphore", "µs wall", col("local", "wall_us"), digits=1),
            figure("client CPU per call", "µs", col("kv", "client_cpu_us"), digits=0),
            figure("nats-server CPU per call", "µs", col("kv", "server_cpu_us"), digits=0),
            figure("lease acquire+release", "leases/s", col("leases_per_s"), digits=0),
            figure("contended: calls", "calls/s", col("contended_calls_per_s"), digits=0),
            figure("contended: share of the cap in use", "", col("contended_use"), digits=2),
        ],
        "tables": [],
        "notes": [
            f"A call's leases cost ~{overhead:.0f} µs on this machine: two claims on its way in (one KV write each "
            "when a slot is free); the releases are not waited for. Against a model answering in 0.5-30 s, "
            "that is noise; against the fake model's 5 ms it is a few percent.",
            "Contended: waiting claimants poll with 5-80 ms jittered backoff, so a freed slot may stand idle for "
            "part of that; the share of the cap in use measures it (1.0 = never idle).",
        ],
        "runs": trials,
    }
