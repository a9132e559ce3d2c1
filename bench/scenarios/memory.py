"""3. Memory: peak RSS per process at a small and a large N (0 ms model)."""

from typing import Any

from bench.harness import BatchRun, StackSpec, batch_config
from bench.report import figure
from bench.scenarios.common import RunBudget, measured, median, ms, per_prompt_ms, run_notes, run_timeout, say


def memory(budget: RunBudget) -> dict[str, Any]:
    small, large = budget.n(1_000), budget.n(100_000)
    spec = StackSpec(fake_model={"latency_ms": "0"})
    config = batch_config(concurrency=64)
    small_runs = [
        measured(spec, f"memory-{small}-{i + 1}", small, config, run_timeout(small)) for i in range(budget.repeats)
    ]
    time_left = budget.remaining_s() - 30
    large_timeout = max(300.0, time_left) if not budget.quick else run_timeout(large)
    say(f"  memory: one run at N = {large:,} (time allowed {large_timeout:.0f} s)")
    big = measured(spec, f"memory-{large}", large, config, large_timeout)
    finished = big.status != "unfinished"
    done_note = (
        f"N = {large:,} ran once (not {budget.repeats}x) to keep `make bench` within its time budget."
        if finished
        else f"N = {large:,} did NOT finish within {large_timeout:.0f} s (time budget): its peaks cover "
        f"~{big.progress[-1][1] if big.progress else 0:,} prompts done."
    )
    processes = [p for p in big.rss if p != "bench-client"]
    lines = [
        f"| process | peak RSS N={small:,} (median of {budget.repeats}) | peak RSS N={large:,} | growth "
        f"| RSS at end N={large:,} | < 200 MB | ≤ +10% | private (RSS minus shared) N={small:,} → N={large:,} "
        f"| CPU ms/prompt N={small:,} → N={large:,} |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    figures = []
    worst_growth = 0.0
    all_under = True
    for proc in processes:
        small_peak = median([_rss(r, proc, "peak_rss_mb") for r in small_runs]) or 0.0
        large_peak = _rss(big, proc, "peak_rss_mb") or 0.0
        growth = (large_peak - small_peak) / small_peak * 100 if small_peak else 0.0
        under, flat = large_peak < 200, growth <= 10
        worst_growth = max(worst_growth, growth)
        all_under = all_under and under
        lines.append(
            f"| {proc} | {small_peak:.1f} | {large_peak:.1f} | {growth:+.1f}% | {_rss(big, proc, 'last_rss_mb'):.1f} "
            f"| {'met' if under else '**missed**'} | {'met' if flat else '**missed**'} "
            f"| {_mb(median([_rss(r, proc, 'peak_private_mb') for r in small_runs]))} → "
            f"{_mb(_rss(big, proc, 'peak_private_mb'))} "
            f"| {ms(median(per_prompt_ms(small_runs, proc)))} → {ms(per_prompt_ms([big], proc)[0])} |"
        )
    figures.append(
        figure(
            "largest peak RSS of any process at the large N",
            "MB",
            [max((_rss(big, p, "peak_rss_mb") or 0.0) for p in processes)],
            target="< 200 MB",
            met=all_under,
        )
    )
    figures.append(
        figure("worst growth small N → large N", "%", [worst_growth], target="≤ +10%", met=worst_growth <= 10)
    )
    figures.append(figure(f"end to end N={large:,}", "prompts/s", [big.rate]))
    series = {p: big.rss[p]["series_mb"] for p in processes}
    return {
        "title": f"3. Memory: peak RSS per process at N = {small:,} and N = {large:,} (0 ms model)",
        "setup": "RSS sampled every 0.2 s with psutil; PostgreSQL = its largest single process (postmaster or a backend)",
        "params": {"small": small, "large": large, "latency_ms": 0, "concurrency": 64},
        "figures": figures,
        "tables": [{"title": "Peak RSS by process (MB)", "lines": lines}],
        "notes": [
            done_note,
            "A PostgreSQL backend's RSS counts the shared_buffers pages it has touched (128 MB here), so it grows "
            "with data volume up to that size without being a leak; the private column leaves shared pages out.",
            "nats-server keeps every event id of the stream's dedup window (2 minutes, ~240 bytes each): its memory "
            "follows the event rate times that window, not N, once a batch outlasts the window.",
            *run_notes([*small_runs, big]),
        ],
        "rss_series_large_mb": series,
        "runs": [r.as_dict() for r in [*small_runs, big]],
    }


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rss(run: BatchRun, process: str, key: str) -> float | None:
    value = run.rss.get(process, {}).get(key)
    return float(value) if isinstance(value, int | float) else None
