"""A fresh embedded stack per measurement, suites as JSONL files, and one measured batch.

Every stack lives in its own temporary data folder (empty streams and tables) and is stopped
in a `finally`; its logs are copied to bench/results/logs/ when something went wrong.
"""

import asyncio
import itertools
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from bench.measure import RssSampler, Target, bench_process, cpu_delta, cpu_snapshot, machine_busy_s
from contracts import ids
from contracts.events import BatchAccepted
from contracts.inputs import BatchConfig, StartBatchRequested, SuiteRef
from contracts.reports import BatchProgress
from evalbus.client import Follower, connect, publish_start, wait_outcome
from evalbus.stack import Stack
from infra.processes import SERVICES, service_argv
from services.generator.suite_loader import BUILTIN_DIR

log = logging.getLogger("bench")
RESULTS_DIR = Path(__file__).parent / "results"
SEED_SUITE = BUILTIN_DIR / "customer_support.jsonl"
MODEL = "fake-model"


def write_suite(path: Path, n: int) -> Path:
    """`n` cases cycled from the bundled customer-support suite, each made unique by its index."""
    seeds = [orjson.loads(line) for line in SEED_SUITE.read_bytes().splitlines() if line.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        for i, seed in zip(range(n), itertools.cycle(seeds), strict=False):
            case: dict[str, Any] = {"id": f"bench-{i:06d}", "prompt": f"{seed['prompt']} (ticket {i})"}
            if seed.get("expected"):
                case["expected"] = seed["expected"]
            if seed.get("metadata"):
                case["metadata"] = seed["metadata"]
            fh.write(orjson.dumps(case) + b"\n")
    return path


@dataclass
class StackSpec:
    """What to start: fake-model flags, replicas, and EVALBUS_* settings for all or one service."""

    fake_model: Mapping[str, str] = field(default_factory=dict)
    replicas: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    service_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


class BenchStack:
    """`with BenchStack(spec, label) as bs:` starts everything and always stops it."""

    def __init__(self, spec: StackSpec, label: str) -> None:
        self.spec = spec
        self.label = label
        self.tmp = Path(tempfile.mkdtemp(prefix=f"evalbus-bench-{label}-"))
        self.stack = Stack(self.tmp / "stack")
        self.startup_s = 0.0

    def __enter__(self) -> "BenchStack":
        started = time.perf_counter()
        try:
            self.stack.start_servers()
            self.stack.start_fake_model(dict(self.spec.fake_model))
            for service in SERVICES:
                # The suites are written to tmp: the generator reads them by path from there.
                env = {"EVALBUS_SUITE_DIRS": str(self.tmp), **self.spec.env, **self.spec.service_env.get(service, {})}
                for i in range(self.spec.replicas.get(service, 1)):
                    name = service if i == 0 else f"{service}-{i + 1}"
                    self.stack.spawn(name, service_argv(service), env)
            self.stack.wait_healthy(timeout_s=90)
        except BaseException:
            self._close(keep_logs=True)
            raise
        self.startup_s = time.perf_counter() - started
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close(keep_logs=exc_type is not None or bool(self.dead()))

    def dead(self) -> list[str]:
        return self.stack.check_alive()

    def _close(self, keep_logs: bool) -> None:
        try:
            self.stack.stop()
        finally:
            logs = self.stack.data_dir / "logs"
            if keep_logs and logs.is_dir():
                dest = RESULTS_DIR / "logs" / f"{self.label}-{int(time.time())}"
                shutil.copytree(logs, dest, dirs_exist_ok=True)
                log.warning("logs of %s kept in %s", self.label, dest)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def targets(self) -> list[Target]:
        """Every process to measure: services, fake model, nats-server, PostgreSQL, this client."""
        out = [Target(name.replace("_", "-"), proc.pid) for name, proc in self.stack.procs.items()]
        assert self.stack.nats and self.stack.nats.proc and self.stack.postgres and self.stack.postgres.proc
        out.append(Target("nats-server", self.stack.nats.proc.pid))
        out.append(Target("postgres", self.stack.postgres.proc.pid))
        out.append(bench_process())
        return out

    def suite(self, n: int) -> Path:
        return write_suite(self.tmp / f"suite-{n}.jsonl", n)


@dataclass
class BatchRun:
    """One measured batch: wall time from the start event's publish to BatchCompleted."""

    n: int
    wall_s: float
    accepted_after_s: float | None
    status: str
    completed: int
    failed: int
    report_wall_s: float | None
    model_latency_p50_ms: float | None
    cpu_s: dict[str, float]
    machine_busy_s: float  # every process on the machine, ours or not
    rss: dict[str, dict[str, object]]
    progress: list[tuple[float, int]]  # (seconds since start, prompts done) as the follower saw it
    dead: list[str]
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.n / self.wall_s if self.wall_s > 0 else 0.0

    def steady_rate(self) -> float | None:
        """Prompts/s between 10% and 90% done (from progress snapshots): the rate without ramp-up or tail."""
        lo = next((p for p in self.progress if p[1] >= 0.1 * self.n), None)
        hi = next((p for p in self.progress if p[1] >= 0.9 * self.n), None)
        if lo is None or hi is None or hi[0] <= lo[0]:
            return None
        return (hi[1] - lo[1]) / (hi[0] - lo[0])

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "wall_s": round(self.wall_s, 3),
            "prompts_per_s": round(self.rate, 1),
            "steady_prompts_per_s": None if (s := self.steady_rate()) is None else round(s, 1),
            "accepted_after_s": None if self.accepted_after_s is None else round(self.accepted_after_s, 3),
            "status": self.status,
            "completed": self.completed,
            "failed": self.failed,
            "report_wall_s": self.report_wall_s,
            "model_latency_p50_ms": self.model_latency_p50_ms,
            "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()},
            "cpu_total_s": round(sum(self.cpu_s.values()), 3),
            "foreign_cpu_s": round(self.machine_busy_s - sum(self.cpu_s.values()), 3),
            "cores_busy": round(self.machine_busy_s / self.wall_s, 2) if self.wall_s > 0 else None,
            "rss": self.rss,
            "dead_processes": self.dead,
            "error": self.error,
        }


def batch_config(**overrides: Any) -> BatchConfig:
    base: dict[str, Any] = {"model": MODEL, "judge_enabled": True, "timeout_s": 60.0, "max_retries": 2}
    return BatchConfig(**{**base, **overrides})


def run_batch(bs: BenchStack, suite: Path, config: BatchConfig, n: int, timeout_s: float) -> BatchRun:
    targets = bs.targets()
    with RssSampler(targets, interval_s=0.2) as sampler:
        run = asyncio.run(_follow(bs.stack, suite, config, n, timeout_s, targets))
    run.rss = sampler.summary()
    run.dead = bs.dead()
    return run


async def _follow(
    stack: Stack, suite: Path, config: BatchConfig, n: int, timeout_s: float, targets: list[Target]
) -> BatchRun:
    batch_id = ids.new_batch_id(time.strftime("%Y%m%dT%H%M%S", time.gmtime()), secrets.token_hex(3))
    start = StartBatchRequested(batch_id=batch_id, config=config, suite=SuiteRef(name=suite.name, path=str(suite)))
    marks: dict[str, float] = {}
    progress: list[tuple[float, int]] = []

    def accepted(_: BatchAccepted) -> None:
        marks["accepted"] = time.perf_counter()

    def progressed(snap: BatchProgress) -> None:
        progress.append((time.perf_counter(), snap.done))

    nc = await connect(stack.nats_url)
    try:
        follower = Follower(batch_id, accepted, progressed)
        await follower.subscribe(nc)
        await nc.flush()
        cpu_before = cpu_snapshot(targets)
        machine_before = machine_busy_s()
        t0 = time.perf_counter()
        await publish_start(nc, start)
        error: str | None = None
        try:
            await asyncio.wait_for(wait_outcome(nc, follower), timeout_s)  # the report from the API
        except TimeoutError:
            error = f"batch did not complete within {timeout_s:.0f} s"
        t1 = time.perf_counter()
        cpu = cpu_delta(cpu_before, cpu_snapshot(targets))
        machine = machine_busy_s() - machine_before
    finally:
        await nc.close()
    out = follower.outcome
    done = out.report
    if out.rejected is not None:
        error = f"rejected: {out.rejected.reason}"
    return BatchRun(
        n=n,
        wall_s=t1 - t0,
        accepted_after_s=marks["accepted"] - t0 if "accepted" in marks else None,
        status=done.status.value if done else "unfinished",
        completed=done.completed if done else 0,
        failed=done.failed if done else 0,
        report_wall_s=done.wall_time_s if done else None,
        model_latency_p50_ms=done.latency_p50_ms if done else None,
        cpu_s=cpu,
        machine_busy_s=machine,
        rss={},
        progress=[(round(t - t0, 3), d) for t, d in progress],
        dead=[],
        error=error,
    )
