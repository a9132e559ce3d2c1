"""What every scenario shares: the run budget, one measured batch on a fresh stack, and the
figures, tables and notes made from a list of runs."""

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.harness import BatchRun, BenchStack, StackSpec, run_batch
from bench.report import figure, stats
from contracts.inputs import BatchConfig

TARGET_RATE = 1_000  # prompts/s end to end: the overhead-bound target


@dataclass(frozen=True)
class RunBudget:
    """How much one `python -m bench.run` may do: runs per measurement, N shrunk for a smoke run
    (`quick`), and the time by which everything should be over."""

    repeats: int
    quick: bool
    deadline: float  # time.monotonic() by which the whole run should be over

    def n(self, full: int) -> int:
        return max(10, full // 10) if self.quick else full

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_timeout(n: int, floor_s: float = 120) -> float:
    return max(floor_s, n / 20)  # 20 prompts/s would be a broken pipeline, not a slow one


def measured(spec: StackSpec, label: str, n: int, config: BatchConfig, timeout_s: float) -> BatchRun:
    with BenchStack(spec, label) as bs:
        suite = bs.suite(n)
        run = run_batch(bs, suite, config, n, timeout_s)
        startup = bs.startup_s
    cpu_ms = sum(run.cpu_s.values()) * 1000 / n
    foreign = run.machine_busy_s - sum(run.cpu_s.values())
    say(
        f"  [{label}] {n:,} prompts in {run.wall_s:.2f} s = {run.rate:,.1f}/s; {run.status} "
        f"({run.completed} ok, {run.failed} failed); CPU {cpu_ms:.2f} ms/prompt; "
        f"foreign CPU {foreign / run.wall_s:.2f} cores; stack up in {startup:.1f} s"
        + (f"; ERROR {run.error}" if run.error else "")
        + (f"; DEAD {run.dead}" if run.dead else "")
    )
    return run


def per_prompt_ms(runs: Sequence[BatchRun], process: str) -> list[float | None]:
    return [r.cpu_s[process] * 1000 / r.n if process in r.cpu_s else None for r in runs]


def foreign_cores(runs: Sequence[BatchRun]) -> list[float | None]:
    return [(r.machine_busy_s - sum(r.cpu_s.values())) / r.wall_s if r.wall_s else None for r in runs]


def median(values: Sequence[float | None]) -> float | None:
    med = stats(values)["median"]
    return None if med is None else float(med)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def cpu_table(runs: Sequence[BatchRun]) -> dict[str, Any]:
    processes = list(runs[0].cpu_s) if runs else []
    totals = [sum(r.cpu_s.values()) * 1000 / r.n for r in runs]
    lines = [
        "| process | CPU ms / prompt (median) | min | max | share |",
        "|---|---:|---:|---:|---:|",
    ]
    total_median = statistics.median(totals) if totals else 0.0
    rows = sorted(processes, key=lambda p: -(median(per_prompt_ms(runs, p)) or 0))
    for proc in rows:
        st = stats(per_prompt_ms(runs, proc))
        share = (st["median"] or 0) / total_median * 100 if total_median else 0
        lines.append(f"| {proc} | {ms(st['median'])} | {ms(st['min'])} | {ms(st['max'])} | {share:.0f}% |")
    st = stats(totals)
    lines.append(f"| **all** | **{ms(st['median'])}** | {ms(st['min'])} | {ms(st['max'])} | 100% |")
    return {"title": "CPU per prompt by process (ms; PostgreSQL = postmaster + all backends)", "lines": lines}


def common_figures(runs: Sequence[BatchRun]) -> list[dict[str, Any]]:
    return [
        figure("steady rate, 10%→90% done", "prompts/s", [r.steady_rate() for r in runs]),
        figure("CPU, all processes", "ms/prompt", [sum(r.cpu_s.values()) * 1000 / r.n for r in runs], digits=2),
        figure("cores busy (machine)", "", [r.machine_busy_s / r.wall_s for r in runs], digits=2),
        figure("foreign CPU (not the stack)", "cores", foreign_cores(runs), digits=2),
    ]


def run_notes(runs: Sequence[BatchRun]) -> list[str]:
    notes = []
    for i, r in enumerate(runs, 1):
        if r.error or r.dead or r.failed or r.status != "completed":
            notes.append(
                f"run {i}: status {r.status}, {r.failed} failed prompts, error {r.error}, dead processes {r.dead}"
            )
    busy = [(r.machine_busy_s - sum(r.cpu_s.values())) / r.wall_s for r in runs if r.wall_s]
    noisy = sum(1 for b in busy if b > 0.2)
    if noisy:
        notes.append(
            f"{noisy} of {len(runs)} runs had more than 0.2 cores of foreign CPU (other processes on the machine, "
            "kernel network work not charged to a process): figures may be low."
        )
    return notes
