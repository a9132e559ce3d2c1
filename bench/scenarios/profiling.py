"""1b. Where the overhead-bound CPU goes: every Python process profiled by py-spy for one batch."""

import os
from typing import Any

from bench import report
from bench.attribution import KERNEL, by_category, split_cpu, table
from bench.harness import BenchStack, StackSpec
from bench.profile import ProfilerUnavailable, profile_batch
from bench.report import figure
from bench.scenarios.common import TARGET_RATE, RunBudget, say

PROFILE_TITLE = "1b. Where the overhead-bound CPU goes: every Python process profiled for one batch"
PROFILE_METHOD = (
    "Method: each process's user CPU (measured) is split in proportion to its py-spy samples by the package of "
    "the innermost frame; samples at a socket read/write or the selector's poll are left out, as py-spy counts a "
    "process waiting there for a core (runnable, not running); system CPU is measured and shown as the kernel row. "
    "Collapsed stacks: bench/results/profiles/<process>.txt (speedscope, flamegraph.pl)."
)


def profile(budget: RunBudget) -> dict[str, Any]:
    n = budget.n(8_000)
    with BenchStack(StackSpec(fake_model={"latency_ms": "0"}), "profile") as bs:
        try:
            profiled = profile_batch(bs, n)
        except ProfilerUnavailable as exc:
            return {"title": PROFILE_TITLE, "setup": f"N = {n:,}", "error": str(exc), "notes": [PROFILE_METHOD]}
    run = profiled.run
    split = {p: split_cpu(profiled.stacks[p], profiled.user_s[p], profiled.system_s[p]) for p in profiled.stacks}
    native = {p: s for p, s in run.cpu_s.items() if p not in split and p != "bench-client"}
    cores = os.cpu_count() or 2
    cpu_ms = sum(run.cpu_s.values()) * 1000 / n
    fake_ms = run.cpu_s.get("fake-model", 0.0) * 1000 / n  # the same measurement as cpu_ms
    top = by_category(split).most_common(4)
    earlier = report.load_all()
    floor_us = earlier.get("blocks", {}).get("floor_cpu_us_per_prompt")
    client_floor_us = earlier.get("blocks", {}).get("client_floor_cpu_us_per_prompt")
    unprofiled = next(
        (f["median"] for f in earlier.get("overhead", {}).get("figures", []) if f["label"] == "CPU, all processes"),
        None,
    )
    budget_ms = cores * 1000 / TARGET_RATE
    # What the services' Python cannot shrink: the two servers, the kernel, the stand-in model.
    kernel_s = sum(c[KERNEL] for p, c in split.items() if p != "fake-model")
    fixed_ms = (sum(native.values()) + kernel_s) * 1000 / n + fake_ms
    python_ms = cpu_ms - fixed_ms - run.cpu_s.get("bench-client", 0.0) * 1000 / n
    say(f"  [profile] {n:,} prompts at {run.rate:,.1f}/s under py-spy; CPU {cpu_ms:.2f} ms/prompt")
    notes = [
        f"What bounds it: the CPU. {run.machine_busy_s / run.wall_s:.2f} of {cores} cores were busy; at "
        f"{cpu_ms:.2f} ms of CPU per prompt (all processes; "
        + (f"{unprofiled:.2f} ms in scenario 1's own runs; " if unprofiled else "")
        + f"the machine's speed drifts) {cores} cores allow at most {cores * 1000 / cpu_ms:,.0f} prompts/s; "
        f"{TARGET_RATE:,} prompts/s would need at most {budget_ms:.2f} ms per prompt.",
        f"The fake model takes {fake_ms:.2f} ms of it (its HTTP server, its answers and real cl100k_base token "
        f"counts); a real model API runs on other machines. Without it: {cpu_ms - fake_ms:.2f} ms per prompt, "
        f"at most {cores * 1000 / (cpu_ms - fake_ms):,.0f} prompts/s.",
        f"Budget: of the {budget_ms:.2f} ms, nats-server, PostgreSQL, the kernel and the fake model took "
        f"{fixed_ms:.2f} ms here, leaving {budget_ms - fixed_ms:.2f} ms for the Python of the five services "
        f"(now {python_ms:.2f} ms)"
        + (
            f", whose NATS and asyncpg calls alone cost {client_floor_us / 1000:.2f} ms at the building blocks' raw "
            "rates, before any HTTP call to the model, validation or logic."
            if client_floor_us
            else "."
        ),
        *(
            [
                f"The messaging and database floor from the building blocks is {floor_us / 1000:.2f} ms per prompt "
                "(client and servers); what is above it is HTTP to the model, validation, the event loop and "
                "logic, spread over every process (no single hot spot)."
            ]
            if floor_us
            else []
        ),
        "Largest costs across processes: " + ", ".join(f"{c} {s * 1000 / n:.2f} ms" for c, s in top) + ".",
        PROFILE_METHOD,
    ]
    return {
        "title": PROFILE_TITLE,
        "setup": f"N = {n:,}, as scenario 1, one batch recorded whole by py-spy (100 Hz, nonblocking)",
        "params": {"n": n},
        "figures": [
            figure("end to end under the profiler", "prompts/s", [run.rate]),
            figure("CPU, all processes", "ms/prompt", [cpu_ms], digits=2),
            figure("CPU of the fake model", "ms/prompt", [fake_ms], digits=2),
        ],
        "tables": [{"title": "CPU per prompt by category and process (ms)", "lines": table(split, n, native)}],
        "notes": notes,
        "split_s": split,
        "runs": [run.as_dict()],
    }


PROFILE_TITLE = "1b. Where the overhead-bound CPU goes: every Python process profiled for one batch"
PROFILE_METHOD = (
    "Method: each process's user CPU (measured) is split in proportion to its py-spy samples by the package of "
    "the innermost frame; samples at a socket read/write or the selector's poll are left out, as py-spy counts a "
    "process waiting there for a core (runnable, not running); system CPU is measured and shown as the kernel row. "
    "Collapsed stacks: bench/results/profiles/<process>.txt (speedscope, flamegraph.pl)."
)
