"""Rendering the query replies (samples, history, quality) for people, with rich tables."""

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from contracts.events import CallAttempt
from contracts.quality import QualityReport
from contracts.queries import BatchHistory, Sample, SampleCall, SamplesPage
from evalbus.render import fmt, pct

ANSWER_PREVIEW = 60


def _preview(text: str | None, width: int = ANSWER_PREVIEW) -> str:
    if not text:
        return "—"
    flat = " ".join(text.split())
    return escape(flat if len(flat) <= width else flat[: width - 1] + "…")


def _verdict(sample: Sample) -> str:
    if sample.status == "failed":
        return f"[red]failed: {sample.failure_category or '?'}[/red]"
    if sample.status == "pending":
        return "[dim]pending[/dim]"
    return "[green]pass[/green]" if sample.passed else "[yellow]fail[/yellow]"


# How a failed attempt reads when its HTTP status alone does not say it.
_OUTCOME_WORDS = {
    "rate_limit": "rate limited",
    "timeout": "timed out",
    "connection": "connection failed",
    "bad_response": "unusable reply",
    "breaker_open": "breaker open",
}


def describe_attempt(a: CallAttempt) -> str:
    """`ok`, `500`, `429 rate limited (retry in 2.1 s)`, `timed out`..."""
    if a.outcome == "ok":
        text = "ok"
    else:
        words = _OUTCOME_WORDS.get(a.outcome, "" if a.status is not None else a.outcome.replace("_", " "))
        text = " ".join(str(x) for x in (a.status, words) if x not in (None, ""))
    if a.retry_in_s is not None:
        text += f" (retry in {a.retry_in_s:.1f} s)"
    return text


def describe_call(call: SampleCall) -> str:
    """`chat: ok`, `judge: 3 attempts: 429 rate limited (retry in 2.1 s), 500, ok`."""
    attempts = ", ".join(describe_attempt(a) for a in call.attempts)
    if len(call.attempts) > 1:
        attempts = f"{len(call.attempts)} attempts: {attempts}"
    shared = f" (shared by {call.prompts})" if call.prompts > 1 else ""
    return f"{call.stage}{shared}: {attempts}"


def describe_calls(sample: Sample) -> str:
    """Every billed call of a sample, one per line; a second chat call is a repeat after a redelivery."""
    return "\n".join(describe_call(c) for c in sample.calls) or "—"


def samples_table(page: SamplesPage) -> Table:
    of = f" of {page.pages}" if page.pages is not None else ""
    matches = f" · {page.total} matching" if page.total is not None else ""
    table = Table(title=f"samples · {page.batch_id} · page {page.page}{of}{matches}", title_justify="left")
    for name, justify in [
        ("#", "right"),
        ("verdict", "left"),
        ("score", "right"),
        ("verdict score", "right"),
        ("latency", "right"),
        ("tokens", "right"),
        ("case", "left"),
        ("answer / error", "left"),
        ("calls", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in page.items:
        tokens = "—" if s.tokens_in is None else f"{s.tokens_in}/{s.tokens_out}"
        table.add_row(
            str(s.index),
            _verdict(s),
            fmt(s.overall_score),
            fmt(s.verdict_score, ".3f"),
            fmt(s.latency_ms, ".0f", " ms"),
            tokens,
            escape(s.case_id or "—"),
            _preview(s.answer if s.status != "failed" else s.failure_error),
            escape(describe_calls(s)),
        )
    return table


def print_samples(console: Console, page: SamplesPage) -> None:
    console.print(samples_table(page))
    if page.truncated:
        console.print(
            f"[yellow]{len(page.items)} of {page.per_page} samples fit in one reply; ask a smaller --per-page "
            "or --max-chars for the rest of this page[/yellow]"
        )
    if not page.items:
        console.print("[dim]no samples match[/dim]")


def history_table(history: BatchHistory) -> Table:
    table = Table(title="recent batches", title_justify="left")
    for name in ("batch", "status", "done / total", "pass rate", "model / judge", "session", "experiment", "created"):
        table.add_column(name)
    for b in history.items:
        table.add_row(
            escape(b.batch_id),
            b.status.value,
            f"{b.done}/{b.target}",
            pct(b.pass_rate),
            escape(f"{b.model or '—'} / {b.judge_model or '—'}"),
            escape(b.session_id or "—"),
            escape(b.experiment or "—"),
            b.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table


def print_history(console: Console, history: BatchHistory) -> None:
    if not history.items:
        console.print("[dim]no batches match[/dim]")
        return
    console.print(history_table(history))


_RATING_STYLE = {"Good": "green", "Needs review": "yellow", "Poor": "red"}


def quality_table(q: QualityReport) -> Table:
    table = Table(title=f"quality · {q.batch_id}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    style = _RATING_STYLE.get(q.rating, "white")
    rows = [
        ("rating", f"[{style}]{q.rating}[/{style}]"),
        ("samples", f"{q.samples} answered · {q.scored} scored · {q.failed} failed"),
        ("pass rate", pct(q.pass_rate)),
        ("tokens", f"{q.total_tokens:,} total · {fmt(q.avg_tokens_per_sample, '.1f')} per sample"),
        ("judge tokens", f"{q.judge_tokens:,}"),
    ]
    for fl in q.text_fields:
        rows.append(
            (
                f"  {fl.field} length",
                f"{fmt(fl.avg_chars, '.1f')} avg · {fl.min_chars if fl.min_chars is not None else '—'}"
                f" to {fl.max_chars if fl.max_chars is not None else '—'} · in {fl.present} · {fl.below_min} short",
            )
        )
    for name, counts in q.distributions.items():
        rows.append((f"  {name}", escape(", ".join(f"{k}: {v}" for k, v in counts.items()))))
    for criterion, mean in q.judge_averages.items():
        rows.append((f"  judge {criterion}", f"{mean:.2f}"))
    for flag in q.flags:
        rows.append(("[yellow]flag[/yellow]", escape(f"{flag.code}: {flag.message}")))
    for what, value in rows:
        table.add_row(what, value)
    return table


def print_quality(console: Console, q: QualityReport) -> None:
    console.print(quality_table(q))
