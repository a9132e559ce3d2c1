"""2. Latency-bound: model and judge at 50 ms, concurrency 16 per endpoint, against the ideal."""

from typing import Any

from bench.harness import StackSpec, batch_config
from bench.report import figure
from bench.scenarios.common import RunBudget, common_figures, cpu_table, measured, median, run_notes, run_timeout


def latency(budget: RunBudget) -> dict[str, Any]:
    n, latency_ms, concurrency = budget.n(2_000), 50, 16
    spec = StackSpec(fake_model={"latency_ms": str(latency_ms)})
    config = batch_config(concurrency=concurrency)
    runs = [measured(spec, f"latency-{i + 1}", n, config, run_timeout(n)) for i in range(budget.repeats)]
    lat_s = latency_ms / 1000
    ideal = n * lat_s / concurrency + lat_s
    single_pool = 2 * n * lat_s / concurrency
    ratio = [r.wall_s / ideal for r in runs]
    med = median(ratio) or 0.0
    # The same bound at the chat-runner's median call latency: what is left above it is calls slower
    # than the median, the start (first call after the start event) and the tail (to BatchCompleted).
    at_measured = [n * p50 / 1000 / concurrency + p50 / 1000 if (p50 := r.model_latency_p50_ms) else None for r in runs]
    p50_med = median([r.model_latency_p50_ms for r in runs])
    bound_med = median(at_measured)
    wall_med = median([r.wall_s for r in runs]) or 0.0
    return {
        "title": "2. Latency-bound: model and judge 50 ms, concurrency 16 per endpoint",
        "setup": (
            f"N = {n:,}; ideal = N x 50 ms / 16 + 50 ms = {ideal:.2f} s (chat and judge overlap); "
            f"single-pool bound = 2 x N x 50 ms / 16 = {single_pool:.2f} s; {budget.repeats} runs"
        ),
        "params": {"n": n, "latency_ms": latency_ms, "concurrency": concurrency, "ideal_s": ideal},
        "figures": [
            figure("wall time", "s", [r.wall_s for r in runs], digits=2),
            figure("wall / ideal", "x", ratio, digits=2, target="≤ 1.10", met=med <= 1.10),
            figure("wall / single-pool bound", "x", [r.wall_s / single_pool for r in runs], digits=2),
            figure("end to end", "prompts/s", [r.rate for r in runs]),
            figure("chat latency p50 (report)", "ms", [r.model_latency_p50_ms for r in runs]),
            figure(
                "wall / the bound at the measured p50 latency",
                "x",
                [r.wall_s / b if b else None for r, b in zip(runs, at_measured, strict=True)],
                digits=2,
            ),
            figure(
                "cores the ideal would need (ideal rate x CPU/prompt)",
                "cores",
                [(n / ideal) * sum(r.cpu_s.values()) / r.n for r in runs],
                digits=2,
            ),
            *common_figures(runs),
        ],
        "tables": [cpu_table(runs)],
        "notes": [
            f"The latency bound allows {concurrency / lat_s:.0f} prompts/s per stage; at the CPU cost per prompt "
            "measured in the overhead scenario the 2 cores may be the tighter limit (compare the steady rate).",
            *(
                [
                    f"What bounds it: calls took {p50_med:.1f} ms at the median, not {latency_ms} ms "
                    f"({p50_med / latency_ms - 1:+.1%}): the fake model answers at {latency_ms} ms, and the rest is "
                    "each side's event loop getting to the socket on 2 cores shared by 8 busy processes. At that "
                    f"latency the bound is {bound_med:.2f} s ({bound_med / ideal:.2f} x the ideal); the other "
                    f"{wall_med - bound_med:.2f} s are calls slower than the median, the start (suite read, first "
                    "call) and the tail (last judgment to the report). Compare the cores the ideal rate would need "
                    "with the 2 there are."
                ]
                if p50_med and bound_med
                else []
            ),
            *run_notes(runs),
        ],
        "runs": [r.as_dict() for r in runs],
    }
