"""1. Overhead-bound: the fake model at 0 ms, judge on, everything persisted."""

from typing import Any

from bench.harness import StackSpec, batch_config
from bench.report import figure
from bench.scenarios.common import (
    TARGET_RATE,
    RunBudget,
    common_figures,
    cpu_table,
    measured,
    median,
    run_notes,
    run_timeout,
)


def overhead(budget: RunBudget) -> dict[str, Any]:
    n = budget.n(10_000)
    spec = StackSpec(fake_model={"latency_ms": "0"})
    config = batch_config(concurrency=64)
    runs = [measured(spec, f"overhead-{i + 1}", n, config, run_timeout(n)) for i in range(budget.repeats)]
    rate = [r.rate for r in runs]
    med = median(rate) or 0.0
    return {
        "title": "1. Overhead-bound: fake model at 0 ms, judge on, everything persisted",
        "setup": f"N = {n:,}, batch concurrency 64, default service settings, {budget.repeats} runs, fresh stack each",
        "params": {"n": n, "latency_ms": 0, "concurrency": 64, "judge_enabled": True},
        "figures": [
            figure(
                "end to end (start event → BatchCompleted)",
                "prompts/s",
                rate,
                target=f"≥ {TARGET_RATE:,}",
                met=med >= TARGET_RATE,
            ),
            *common_figures(runs),
        ],
        "tables": [cpu_table(runs)],
        "notes": run_notes(runs),
        "runs": [r.as_dict() for r in runs],
    }
