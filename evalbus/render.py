"""Rendering reports and progress for people (rich) and for programs (JSON)."""

from rich.console import Console
from rich.table import Table

from contracts.reports import BatchProgress, BatchReport


def fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    """A number for a table cell; — when there is none."""
    return "—" if value is None else f"{value:{spec}}{unit}"


def pct(fraction: float | None) -> str:
    """A 0-1 fraction as a percentage with one decimal; — when there is none."""
    return fmt(None if fraction is None else fraction * 100, ".1f", "%")


def report_table(rep: BatchReport) -> Table:
    table = Table(title=f"evalbus report · {rep.batch_id}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [
        ("status", rep.status.value),
        ("model / judge", f"{rep.model} / {rep.judge_model}"),
        ("suite", rep.suite_name),
        ("session / experiment", f"{rep.session_id or '—'} / {rep.experiment or '—'}"),
        ("prompts", f"{rep.total} total · {rep.completed} scored · {rep.failed} failed"),
        (
            "pass rate",
            pct(rep.pass_rate) + f" ({rep.passed}/{rep.completed})",
        ),
        ("mean score", fmt(rep.mean_score)),
    ]
    rows += [
        (
            f"  {c.criterion}",
            f"{fmt(c.mean_score)} avg · {pct(c.pass_rate)} pass",
        )
        for c in rep.criteria
    ]
    for comp in rep.components:
        if comp.kind == "judge":
            continue
        verdicts = f" · {', '.join(f'{k} {v}' for k, v in sorted(comp.verdicts.items()))}" if comp.verdicts else ""
        rows.append((f"  check {comp.name}", f"{comp.passed}/{comp.evaluated} passed ({comp.kind}){verdicts}"))
    if rep.judge_calls:
        fallbacks = f" · {rep.judge_fallbacks} graded alone after a bad batch" if rep.judge_fallbacks else ""
        rows.append(("judge calls", f"{rep.judge_calls:g} ({rep.judge_calls_saved:g} saved by batching){fallbacks}"))
    if rep.breaker_openings:
        rows.append(("breaker openings", str(rep.breaker_openings)))
    if rep.failures_by_category:
        rows.append(("failures", ", ".join(f"{k}: {v}" for k, v in sorted(rep.failures_by_category.items()))))
    rows.append(
        ("latency p50 / p95", f"{fmt(rep.latency_p50_ms, '.1f', ' ms')} / {fmt(rep.latency_p95_ms, '.1f', ' ms')}")
    )
    rows += spend_rows(rep)
    rows.append(("wall time", fmt(rep.wall_time_s, ".2f", " s")))
    for what, value in rows:
        table.add_row(what, value)
    return table


def spend_rows(rep: BatchReport) -> list[tuple[str, str]]:
    """Tokens and cost: the useful ones (of the recorded results) and, from the call ledger, the
    billed ones (every attempt, repeats after a redelivery included) beside them."""
    if not rep.billed_calls:  # a batch run before the ledger existed
        return [
            ("tokens in / out", f"{rep.tokens_in:,} / {rep.tokens_out:,}"),
            ("judge tokens in / out", f"{rep.judge_tokens_in:,} / {rep.judge_tokens_out:,}"),
            ("estimated cost", f"${rep.cost_usd:.4f}"),
        ]
    return [
        (
            "tokens in / out",
            f"{rep.tokens_in:,} / {rep.tokens_out:,} useful · {rep.billed_tokens_in:,} / {rep.billed_tokens_out:,} billed",
        ),
        (
            "judge tokens in / out",
            f"{rep.judge_tokens_in:,} / {rep.judge_tokens_out:,} useful · "
            f"{rep.billed_judge_tokens_in:,} / {rep.billed_judge_tokens_out:,} billed",
        ),
        ("estimated cost", f"${rep.cost_usd:.4f} useful · ${rep.billed_cost_usd:.4f} billed"),
        ("model calls", f"{rep.billed_calls:,} billed · {rep.billed_attempts:,} attempts"),
    ]


def print_report(console: Console, rep: BatchReport) -> None:
    console.print(report_table(rep))


def print_status(console: Console, snap: BatchProgress) -> None:
    share = 100 * snap.done / snap.total if snap.total else 0.0
    console.print(
        f"[bold]{snap.batch_id}[/bold] {snap.status.value}: {snap.done}/{snap.total} done ({share:.1f}%) · "
        f"{snap.responded} responded · {snap.judged} judged · {snap.scored} scored · {snap.failed} failed · "
        f"{snap.elapsed_s:.1f} s"
    )
