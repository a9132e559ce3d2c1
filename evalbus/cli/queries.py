"""Commands that read recorded batches from the recorder's API: report, quality, samples,
history, and export (every sample to a file)."""

import asyncio
from functools import partial
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from contracts.enums import BatchStatus
from contracts.queries import DEFAULT_MAX_CHARS, MAX_PER_PAGE, HistoryQuery, SamplesQuery
from evalbus import client, export, render, render_queries
from evalbus.cli.common import EXIT_REJECTED, JsonFlag, ask_recorder, call_recorder, console, err
from evalbus.export import ExportFormat


def report(batch_id: str, as_json: JsonFlag = False) -> None:
    """The report of a batch, as recorded (also while it runs)."""
    show = partial(render.print_report, console)
    raise typer.Exit(asyncio.run(ask_recorder(lambda nc: client.fetch_report(nc, batch_id), show, as_json)))


def quality(batch_id: str, as_json: JsonFlag = False) -> None:
    """The quality report of a batch: stored when it finished, computed now while it runs."""
    show = partial(render_queries.print_quality, console)
    raise typer.Exit(asyncio.run(ask_recorder(lambda nc: client.fetch_quality(nc, batch_id), show, as_json)))


def bad_query(exc: ValidationError) -> NoReturn:
    for e in exc.errors():
        where = ".".join(str(x) for x in e["loc"])
        err.print(f"[red]{where + ': ' if where else ''}{e['msg']}[/red]")
    raise typer.Exit(EXIT_REJECTED)


def samples(
    batch_id: str,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            help="field=value, repeatable: passed, status (scored/failed/pending), stage, category, case_id, "
            "model, criterion.<name> (true/false), metadata.<key>",
        ),
    ] = None,
    min_score: Annotated[float | None, typer.Option(help="judge overall score at least this (1-10)")] = None,
    min_verdict: Annotated[float | None, typer.Option(help="weighted verdict score at least this (0-1)")] = None,
    sort: Annotated[
        str, typer.Option(help="index, score, verdict, latency, tokens or cost; a leading - sorts descending")
    ] = "index",
    page: Annotated[int, typer.Option(help="page number, from 1")] = 1,
    per_page: Annotated[int, typer.Option(help=f"samples per page (at most {MAX_PER_PAGE})")] = 20,
    max_chars: Annotated[int, typer.Option(help="clip each text field to this many characters")] = DEFAULT_MAX_CHARS,
    as_json: JsonFlag = False,
) -> None:
    """A batch's prompts with their answers, scores and failures, filtered, sorted and paged."""
    try:
        q = SamplesQuery.model_validate(
            {
                "batch_id": batch_id,
                "filters": filters or [],
                "min_score": min_score,
                "min_verdict": min_verdict,
                "sort": sort,
                "page": page,
                "per_page": per_page,
                "max_chars": max_chars,
            }
        )
    except ValidationError as exc:
        bad_query(exc)
    show = partial(render_queries.print_samples, console)
    raise typer.Exit(asyncio.run(ask_recorder(lambda nc: client.fetch_samples(nc, q), show, as_json)))


def history(
    limit: Annotated[int, typer.Option(help="batches to show, newest first")] = 20,
    session: Annotated[str | None, typer.Option(help="only this session")] = None,
    experiment: Annotated[str | None, typer.Option(help="only this experiment")] = None,
    status: Annotated[BatchStatus | None, typer.Option(help="only batches in this state")] = None,
    model: Annotated[str | None, typer.Option(help="only batches of this model")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Recent batches: id, status, done and total prompts, pass rate, model, session, experiment."""
    try:
        q = HistoryQuery(limit=limit, session=session, experiment=experiment, status=status, model=model)
    except ValidationError as exc:
        bad_query(exc)
    show = partial(render_queries.print_history, console)
    raise typer.Exit(asyncio.run(ask_recorder(lambda nc: client.fetch_history(nc, q), show, as_json)))


def export_batch(
    batch_id: str,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="jsonl, csv or parquet")] = "jsonl",
    out: Annotated[str | None, typer.Option(help="file to write (default <batch>.<format>; - for stdout)")] = None,
    filters: Annotated[list[str] | None, typer.Option("--filter", help="field=value, as for `samples`")] = None,
) -> None:
    """Write every sample of a batch to a file, page by page (any batch size, constant memory)."""
    target = None if out == "-" else Path(out or f"{batch_id}.{fmt}")
    try:
        SamplesQuery(batch_id=batch_id, filters=filters or [])
    except ValidationError as exc:
        bad_query(exc)
    if fmt == "parquet" and target is None:
        err.print("[red]Parquet needs a file: give --out PATH[/red]")
        raise typer.Exit(EXIT_REJECTED)

    async def go() -> int:
        rows, code = await call_recorder(lambda nc: export.export(nc, batch_id, fmt, target, filters))
        if rows is None:
            return code
        err.print(f"exported {rows} samples of {batch_id} to {target or 'stdout'}")
        return 0

    raise typer.Exit(asyncio.run(go()))
