"""Commands that start and steer a batch: run (and follow it live), status, cancel, resume, and
the self-contained demo."""

import asyncio
import contextlib
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from nats.aio.client import Client
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from contracts import ids
from contracts.enums import DEFAULT_CRITERIA, BatchStatus
from contracts.events import BatchAccepted
from contracts.inputs import BatchConfig, CancelBatchRequested, Case, JudgeMode, StartBatchRequested, SuiteRef
from contracts.presets import PresetName, merged
from contracts.quality import QualityReport
from contracts.reports import BatchProgress, ResumeResult
from evalbus import client, render, render_queries, stack
from evalbus.cli.common import (
    EXIT_REJECTED,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    JsonFlag,
    ask_recorder,
    connect,
    console,
    data_dir,
    err,
)
from infra.credentials import OPERATOR_ROLE
from services.generator.suite_loader import SuiteFile, builtin_names, file_cases
from services.runtime.settings import get_settings

INLINE_LIMIT_BYTES = 512 * 1024


def suite_source(suite: str) -> SuiteRef | Path:
    """Inline cases for a small valid suite file, or a bundled suite by name; any other file is
    returned to be uploaded (`client.upload_suite`): both work with services on other machines."""
    path = Path(suite)
    if not path.exists() and suite in builtin_names():
        return SuiteRef(builtin=suite)
    if not path.is_file():
        raise ValueError(f"suite file {suite!r} does not exist (bundled suites: {', '.join(builtin_names())})")
    if path.stat().st_size <= INLINE_LIMIT_BYTES:
        try:
            cases: list[Case] = list(file_cases(SuiteFile.local(path)))
            return SuiteRef(name=path.name, cases=cases)
        except ValueError:  # SuiteError, or too many cases to go inline
            pass  # uploaded as it is: the generator names the problem in its rejection
    return path


def new_batch_id() -> str:
    return ids.new_batch_id(datetime.now(UTC).strftime("%Y%m%dT%H%M%S"), secrets.token_hex(3))


async def _start_with(nc: Client, batch_id: str, config: BatchConfig, source: SuiteRef | Path) -> StartBatchRequested:
    suite = await client.upload_suite(nc, batch_id, source) if isinstance(source, Path) else source
    return StartBatchRequested(batch_id=batch_id, config=config, suite=suite)


async def _run(
    batch_id: str, config: BatchConfig, source: SuiteRef | Path, as_json: bool, timeout_s: float | None
) -> int:
    nc = await connect()
    try:
        start = await _start_with(nc, batch_id, config, source)
    except Exception as exc:
        await nc.drain()
        err.print(f"[red]could not upload suite {source}: {exc!r}[/red]")
        return EXIT_UNREACHABLE
    started = time.monotonic()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        disable=as_json,
        transient=False,
    )
    task = bar.add_task(f"{start.batch_id} queued", total=None, detail="")

    def accepted(evt: BatchAccepted) -> None:
        bar.update(task, total=evt.total_prompts, description=f"{start.batch_id} running")

    def progressed(snap: BatchProgress) -> None:
        bar.update(
            task,
            completed=snap.done,
            total=snap.total,
            detail=f"responded {snap.responded} · judged {snap.judged} · failed {snap.failed}"
            + (f" · breaker open: {', '.join(snap.breakers_open)}" if snap.breakers_open else ""),
        )

    follower = client.Follower(start.batch_id, accepted, progressed)
    quality: QualityReport | None = None
    try:
        await follower.subscribe(nc)
        ack = await client.publish_start(nc, start)
        if ack.duplicate:
            err.print(
                f"[red]batch {start.batch_id} rejected: it was already started (its start is in the stream); "
                "batch ids are single-use: start it again under a new id[/red]"
            )
            return EXIT_REJECTED
        with bar:
            # The report comes from the recorder's API: a batch.completed body is not trusted.
            out = await asyncio.wait_for(client.wait_outcome(nc, follower), timeout_s)
        if out.report is not None and not as_json:
            with contextlib.suppress(client.ApiError, TimeoutError):
                quality = await client.fetch_quality(nc, start.batch_id)
    except TimeoutError:
        err.print(
            f"[red]batch {start.batch_id} did not finish within {timeout_s:g} s; it keeps running "
            f"(`evalbus status {start.batch_id}`)[/red]"
        )
        return EXIT_TIMEOUT
    finally:
        await nc.drain()
    if out.rejected is not None:
        if as_json:
            console.print_json(out.rejected.model_dump_json())
        err.print(f"[red]batch {start.batch_id} rejected: {out.rejected.reason}[/red]")
        return EXIT_REJECTED
    assert out.report is not None
    rep = out.report
    if rep.status is BatchStatus.REJECTED:
        err.print(f"[red]batch {start.batch_id} rejected (`evalbus status {start.batch_id}`)[/red]")
        return EXIT_REJECTED
    if as_json:
        sys.stdout.write(rep.model_dump_json(indent=2) + "\n")
    else:
        render.print_report(console, rep)
        if quality is not None:
            render_queries.print_quality(console, quality)
        console.print(f"[dim]client wall time {time.monotonic() - started:.2f} s[/dim]")
    return 1 if rep.status is BatchStatus.FAILED else 0


def run(
    suite: Annotated[str, typer.Argument(help="JSONL or YAML suite file, or a bundled suite name")],
    model: Annotated[str, typer.Option(help="model under test")],
    endpoint: Annotated[
        str | None, typer.Option(help="configured model endpoint (EVALBUS_ENDPOINTS) to call; default: `default`")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="base URL of the model: one of the configured endpoints' URLs")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="judge model (default: the model under test)")] = None,
    judge_endpoint: Annotated[
        str | None, typer.Option(help="configured endpoint of the judge (default: the model's, else `judge`)")
    ] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="judge base URL (default: --base-url)")] = None,
    criteria: Annotated[str, typer.Option(help="comma-separated judge criteria")] = ",".join(DEFAULT_CRITERIA),
    threshold: Annotated[float, typer.Option(help="pass mark for every criterion (1-10)")] = 7.0,
    session_id: Annotated[str | None, typer.Option(help="session id (default batch-<model>-<UTC time>)")] = None,
    experiment: Annotated[str | None, typer.Option(help="experiment name, to compare sessions")] = None,
    preset: Annotated[
        PresetName, typer.Option(help="safety settings: conservative, default or aggressive; flags override it")
    ] = "default",
    concurrency: Annotated[int | None, typer.Option(help="model calls in flight for this batch")] = None,
    judge_concurrency: Annotated[
        int | None, typer.Option(help="judge calls in flight for this batch (default: --concurrency)")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="seconds per model call attempt")] = None,
    judge_timeout: Annotated[
        float | None, typer.Option(help="seconds per judge call attempt (default: --timeout)")
    ] = None,
    retries: Annotated[int | None, typer.Option(help="retries per model and judge call")] = None,
    retry_delay: Annotated[float | None, typer.Option(help="seconds before the first retry (then doubling)")] = None,
    breaker_threshold: Annotated[
        int | None, typer.Option(help="consecutive endpoint failures that open the breaker (default: the service's)")
    ] = None,
    breaker_reset: Annotated[
        float | None, typer.Option(help="seconds an open breaker waits before a probe (default: the service's)")
    ] = None,
    sql_timeout: Annotated[
        float | None, typer.Option(help="seconds per SQL check query, for every check (default: each check's own)")
    ] = None,
    sql_concurrency: Annotated[
        int | None, typer.Option(help="SQL checks at once per database (at most the scorer's; default: the scorer's)")
    ] = None,
    system_prompt: Annotated[str | None, typer.Option(help="system prompt prepended to every case")] = None,
    judge: Annotated[bool, typer.Option("--judge/--no-judge", help="grade answers with the judge")] = True,
    judge_batch_size: Annotated[
        int | None, typer.Option(help="answers graded in one judge call (1: one by one; default: the preset's)")
    ] = None,
    judge_mode: Annotated[JudgeMode, typer.Option(help="combined: all criteria per call; per_criterion")] = "combined",
    judge_weight: Annotated[float, typer.Option(help="weight of the judge among reference checks")] = 1.0,
    pass_threshold: Annotated[
        float | None,
        typer.Option(help="pass when the weighted score (0-1) reaches this; default: every component must pass"),
    ] = None,
    batch_id: Annotated[str | None, typer.Option(help="batch id (default: generated)")] = None,
    wait_timeout: Annotated[float | None, typer.Option(help="give up following after this many seconds")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Start a batch, follow its progress live, and print its report."""
    try:
        limits = merged(
            preset,
            concurrency=concurrency,
            judge_concurrency=judge_concurrency,
            timeout_s=timeout,
            judge_timeout_s=judge_timeout,
            max_retries=retries,
            retry_base_s=retry_delay,
            breaker_fail_max=breaker_threshold,
            breaker_reset_s=breaker_reset,
            sql_timeout_s=sql_timeout,
            sql_concurrency=sql_concurrency,
            judge_batch_size=judge_batch_size,
        )
        config = BatchConfig(
            model=model,
            endpoint=endpoint,
            base_url=base_url,
            judge_model=judge_model,
            judge_endpoint=judge_endpoint,
            judge_base_url=judge_base_url,
            criteria=[c.strip() for c in criteria.split(",") if c.strip()],
            default_threshold=threshold,
            session_id=session_id,
            experiment=experiment,
            system_prompt=system_prompt,
            judge_enabled=judge,
            judge_mode=judge_mode,
            judge_weight=judge_weight,
            pass_threshold=pass_threshold,
            **limits,
        )
        source = suite_source(suite)
        batch_id = batch_id or new_batch_id()
        if not ids.is_valid_batch_id(batch_id):
            raise ValueError(f"batch id {batch_id!r} must match {ids.BATCH_ID_PATTERN}")
    except ValueError as exc:
        err.print(f"[red]invalid batch: {exc}[/red]")
        raise typer.Exit(EXIT_REJECTED) from exc
    raise typer.Exit(asyncio.run(_run(batch_id, config, source, as_json, wait_timeout)))


def status(batch_id: str, as_json: JsonFlag = False) -> None:
    """Progress of a batch, as recorded."""
    show = partial(render.print_status, console)
    raise typer.Exit(asyncio.run(ask_recorder(lambda nc: client.fetch_status(nc, batch_id), show, as_json)))


def cancel(
    batch_id: str,
    reason: Annotated[str, typer.Option(help="why, kept with the batch")] = "cancelled by user",
) -> None:
    """Cancel a batch: pending prompts are not sent to the model; the batch ends `cancelled`."""

    async def go() -> None:
        nc = await connect()
        try:
            await client.publish_cancel(nc, CancelBatchRequested(batch_id=batch_id, reason=reason))
        finally:
            await nc.drain()

    try:
        asyncio.run(go())
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_REJECTED) from exc
    console.print(f"cancel requested for {batch_id}")


def resume(batch_id: str, as_json: JsonFlag = False) -> None:
    """Resume a running batch: send its unfinished prompts on again, rebuilt from the database.

    An operator's command: the embedded stack's `operator` login, or EVALBUS_NATS_USER=operator."""

    def show(result: ResumeResult) -> None:
        console.print(f"resumed {result.redriven} unfinished prompts of {batch_id} {result.by_event or ''}")

    token = f"cli-{secrets.token_hex(4)}"
    ask = partial(client.resume, batch_id=batch_id, token=token)
    raise typer.Exit(asyncio.run(ask_recorder(ask, show, as_json, role=OPERATOR_ROLE)))


def demo(
    suite: Annotated[str, typer.Option(help="suite to run")] = "customer_support",
    latency_ms: Annotated[float, typer.Option(help="fake model latency per call")] = 40.0,
    concurrency: Annotated[int, typer.Option(help="model calls in flight")] = 16,
) -> None:
    """A real batch through every service on a fresh embedded stack, then everything is stopped."""
    demo_dir = data_dir() / "demo"
    if stack.read_state(demo_dir):
        stack.down(demo_dir)
    console.print("[bold]Starting nats-server, PostgreSQL, the fake model and five services...[/bold]")
    try:
        st = stack.up(demo_dir, fake_model={"latency_ms": str(latency_ms), "jitter_ms": str(latency_ms / 2)})
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    code = 1
    try:
        console.print(f"  NATS {st['nats_url']} · PostgreSQL {st['database_url']} · model {st['model_base_url']}")
        config = BatchConfig(
            model="evalbus-fake",
            judge_model="evalbus-fake-judge",
            base_url=str(st["model_base_url"]),
            concurrency=concurrency,
            experiment="demo",
        )
        source = suite_source(suite)
        # This command talks to the demo's stack, as `client` with the demo stack's credentials.
        os.environ.pop("EVALBUS_NATS_URL", None)
        os.environ["EVALBUS_DATA_DIR"] = str(demo_dir)
        get_settings.cache_clear()
        code = asyncio.run(_run(new_batch_id(), config, source, False, 600))
    finally:
        console.print("[bold]Stopping the stack...[/bold]")
        stack.down(demo_dir)
    raise typer.Exit(code)
