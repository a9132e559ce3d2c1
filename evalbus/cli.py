"""`evalbus`: run a batch and watch it, read recorded batches, start and stop the embedded stack."""

import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from nats.aio.client import Client
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from contracts import ids
from contracts.enums import DEFAULT_CRITERIA, BatchStatus
from contracts.events import BatchAccepted
from contracts.inputs import BatchConfig, CancelBatchRequested, Case, JudgeMode, StartBatchRequested, SuiteRef
from contracts.presets import PRESETS, PresetName
from contracts.quality import QualityReport
from contracts.queries import DEFAULT_MAX_CHARS, MAX_PER_PAGE, HistoryQuery, SamplesQuery
from contracts.reports import BatchProgress, ResumeResult
from evalbus import client, export, render, render_queries, stack
from evalbus.export import ExportFormat
from infra import credentials
from infra.processes import SERVICES
from services.generator.suite_loader import SuiteFile, builtin_names, file_cases
from services.runtime.messaging.health import heartbeat_path
from services.runtime.settings import get_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
err = Console(stderr=True)
INLINE_LIMIT_BYTES = 512 * 1024
SERVICE_NAMES = [s.replace("_", "-") for s in SERVICES]

EXIT_REJECTED = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4


def _data_dir() -> Path:
    return get_settings().data_dir


def nats_login() -> tuple[str, str | None, str | None]:
    """URL, user and password: EVALBUS_NATS_URL with EVALBUS_NATS_USER/PASSWORD, else the
    embedded stack that `evalbus up` started, as `client` with the password it generated."""
    settings = get_settings()
    if settings.nats_url:
        return (settings.nats_url, *settings.nats_credentials())
    state = stack.read_state(settings.data_dir)
    if state is None:
        err.print("[red]No NATS server: set EVALBUS_NATS_URL or start the embedded stack with `evalbus up`.[/red]")
        raise typer.Exit(EXIT_UNREACHABLE)
    creds = credentials.read(settings.data_dir) if state.get("locked_down") else None
    user, password = creds.login(credentials.CLIENT_ROLE) if creds else settings.nats_credentials()
    return str(state["nats_url"]), user, password


async def connect() -> Client:
    try:
        return await client.connect(*nats_login())
    except client.ConnectError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_UNREACHABLE) from exc


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


@app.command()
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
    session_id: Annotated[str | None, typer.Option(help="session tag (default batch-<model>-<UTC time>)")] = None,
    experiment: Annotated[str | None, typer.Option(help="experiment name, to compare sessions")] = None,
    preset: Annotated[PresetName, typer.Option(help="limits: conservative, default or aggressive")] = "default",
    concurrency: Annotated[int | None, typer.Option(help="model calls in flight for this batch")] = None,
    timeout: Annotated[float | None, typer.Option(help="seconds per model call")] = None,
    retries: Annotated[int | None, typer.Option(help="retries per model call")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="system prompt prepended to every case")] = None,
    judge: Annotated[bool, typer.Option("--judge/--no-judge", help="grade answers with the judge")] = True,
    judge_batch_size: Annotated[int, typer.Option(help="answers graded in one judge call (1: one by one)")] = 10,
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
    limits = PRESETS[preset]
    try:
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
            concurrency=limits.concurrency if concurrency is None else concurrency,
            timeout_s=limits.timeout_s if timeout is None else timeout,
            max_retries=limits.max_retries if retries is None else retries,
            retry_base_s=limits.retry_base_s,
            system_prompt=system_prompt,
            judge_enabled=judge,
            judge_batch_size=judge_batch_size,
            judge_mode=judge_mode,
            judge_weight=judge_weight,
            pass_threshold=pass_threshold,
        )
        source = suite_source(suite)
        batch_id = batch_id or new_batch_id()
        if not ids.is_valid_batch_id(batch_id):
            raise ValueError(f"batch id {batch_id!r} must match {ids.BATCH_ID_PATTERN}")
    except ValueError as exc:
        err.print(f"[red]invalid batch: {exc}[/red]")
        raise typer.Exit(EXIT_REJECTED) from exc
    raise typer.Exit(asyncio.run(_run(batch_id, config, source, as_json, wait_timeout)))


T = TypeVar("T")


async def _call_recorder(call: Callable[[Client], Awaitable[T]]) -> tuple[T | None, int]:
    """One call that needs the recorder: (its result, 0), or (None, exit code) after saying why."""
    nc = await connect()
    try:
        return await call(nc), 0
    except client.ApiError as exc:
        err.print(f"[red]{exc.description}[/red]")
        return None, 1
    except TimeoutError:
        err.print("[red]no answer from the recorder (is it running?)[/red]")
        return None, EXIT_UNREACHABLE
    finally:
        await nc.drain()


async def _ask_recorder(
    ask: Callable[[Client], Awaitable[BaseModel]], show: Callable[[Any], None], as_json: bool
) -> int:
    """One request to the recorder's API, printed as JSON or for people; errors become exit codes."""
    answer, code = await _call_recorder(ask)
    if answer is None:
        return code
    if as_json:
        sys.stdout.write(answer.model_dump_json(indent=2) + "\n")
    else:
        show(answer)
    return 0


@app.command()
def status(batch_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Progress of a batch, as recorded."""
    show = partial(render.print_status, console)
    raise typer.Exit(asyncio.run(_ask_recorder(lambda nc: client.fetch_status(nc, batch_id), show, as_json)))


@app.command()
def report(batch_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The report of a batch, as recorded (also while it runs)."""
    show = partial(render.print_report, console)
    raise typer.Exit(asyncio.run(_ask_recorder(lambda nc: client.fetch_report(nc, batch_id), show, as_json)))


@app.command()
def quality(batch_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The quality report of a batch: stored when it finished, computed now while it runs."""
    show = partial(render_queries.print_quality, console)
    raise typer.Exit(asyncio.run(_ask_recorder(lambda nc: client.fetch_quality(nc, batch_id), show, as_json)))


def _bad_query(exc: ValidationError) -> NoReturn:
    for e in exc.errors():
        where = ".".join(str(x) for x in e["loc"])
        err.print(f"[red]{where + ': ' if where else ''}{e['msg']}[/red]")
    raise typer.Exit(EXIT_REJECTED)


@app.command()
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
    as_json: Annotated[bool, typer.Option("--json")] = False,
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
        _bad_query(exc)
    show = partial(render_queries.print_samples, console)
    raise typer.Exit(asyncio.run(_ask_recorder(lambda nc: client.fetch_samples(nc, q), show, as_json)))


@app.command()
def history(
    limit: Annotated[int, typer.Option(help="batches to show, newest first")] = 20,
    session: Annotated[str | None, typer.Option(help="only this session")] = None,
    experiment: Annotated[str | None, typer.Option(help="only this experiment")] = None,
    status: Annotated[BatchStatus | None, typer.Option(help="only batches in this state")] = None,
    model: Annotated[str | None, typer.Option(help="only batches of this model")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent batches: id, status, done and target prompts, pass rate, model, session, experiment."""
    try:
        q = HistoryQuery(limit=limit, session=session, experiment=experiment, status=status, model=model)
    except ValidationError as exc:
        _bad_query(exc)
    show = partial(render_queries.print_history, console)
    raise typer.Exit(asyncio.run(_ask_recorder(lambda nc: client.fetch_history(nc, q), show, as_json)))


@app.command("export")
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
        _bad_query(exc)
    if fmt == "parquet" and target is None:
        err.print("[red]Parquet needs a file: give --out PATH[/red]")
        raise typer.Exit(EXIT_REJECTED)

    async def go() -> int:
        rows, code = await _call_recorder(lambda nc: export.export(nc, batch_id, fmt, target, filters))
        if rows is None:
            return code
        err.print(f"exported {rows} samples of {batch_id} to {target or 'stdout'}")
        return 0

    raise typer.Exit(asyncio.run(go()))


@app.command()
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


@app.command()
def resume(batch_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Send a running batch's unfinished prompts on again, rebuilt from the database."""

    def show(result: ResumeResult) -> None:
        console.print(f"re-drove {result.redriven} unfinished prompts of {batch_id} {result.by_event or ''}")

    token = f"cli-{secrets.token_hex(4)}"
    raise typer.Exit(asyncio.run(_ask_recorder(lambda nc: client.resume(nc, batch_id, token), show, as_json)))


@app.command()
def health(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Ask every service for its status over NATS; exits 1 if any is missing or unhealthy."""

    async def go() -> list[dict[str, object]]:
        nc = await connect()
        try:
            return [await client.service_status(nc, svc) for svc in SERVICE_NAMES]
        finally:
            await nc.drain()

    statuses = asyncio.run(go())
    # The embedded stack's supervisor counts restarts; against other servers there is no count.
    state = None if get_settings().nats_url else stack.read_state(_data_dir())
    restarts: dict[str, int] = dict(state.get("restarts") or {}) if state else {}  # type: ignore[call-overload]
    if state is not None:
        for st in statuses:
            st["restarts"] = restarts.get(str(st["service"]), 0)
    if as_json:
        sys.stdout.write(json.dumps(statuses, indent=2) + "\n")
    else:
        for st in statuses:
            mark = "[green]healthy[/green]" if st.get("healthy") else "[red]NOT HEALTHY[/red]"
            consumers = ", ".join(f"{c['durable']} handled {c['handled']}" for c in st.get("consumers", []))  # type: ignore[union-attr,attr-defined]
            restarted = f" restarts {st['restarts']}" if "restarts" in st else ""
            console.print(f"{st['service']:<12} {mark}{restarted} {consumers}")
        for name in ("fake-model", "nats-server", "postgres"):
            if restarts.get(name):
                console.print(f"{name:<12} restarts {restarts[name]}")
    raise typer.Exit(0 if all(st.get("healthy") for st in statuses) else 1)


@app.command()
def alive(
    service: str,
    max_age: Annotated[float, typer.Option(help="seconds since the last heartbeat")] = 30.0,
) -> None:
    """Container liveness probe: exits 0 if SERVICE on this host touched its heartbeat recently."""
    path = heartbeat_path(get_settings().heartbeat_dir, service)
    age = time.time() - path.stat().st_mtime if path.exists() else None
    if age is None or age > max_age:
        err.print(f"{service}: no heartbeat in {max_age:g} s ({path})")
        raise typer.Exit(1)
    console.print(f"{service}: alive ({age:.1f} s ago)")


@app.command()
def up(
    latency_ms: Annotated[float, typer.Option(help="fake model latency")] = 20.0,
) -> None:
    """Start the embedded stack (nats-server, PostgreSQL, fake model, five services) in the background,
    locked down (per-service logins), under a supervisor that restarts a process that exits."""
    data_dir = _data_dir()
    try:
        st = stack.up(data_dir, fake_model={"latency_ms": str(latency_ms)})
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"evalbus is up (data in {data_dir}, logs in {data_dir / 'logs'})")
    console.print(f"  EVALBUS_NATS_URL={st['nats_url']}  (as user client; every role's password is in")
    console.print(f"  {credentials.credentials_path(data_dir)}, readable by you only)")
    console.print(f"  PostgreSQL {st['database_url']}")
    console.print(f"  fake model: {st['model_base_url']}")


@app.command()
def down() -> None:
    """Stop the embedded stack that `evalbus up` started (its supervisor and every process)."""
    if stack.down(_data_dir()):
        console.print("evalbus is down")
    else:
        console.print("no embedded stack was running")


@app.command()
def migrate() -> None:
    """Create streams, consumers and the database schema on the configured servers (deploy step)."""
    settings = get_settings()
    from infra.migrate import migrate as run_migrations
    from infra.nats_topology import apply_topology

    async def go() -> None:
        user, password = settings.nats_credentials()
        for warning in await apply_topology(settings.require_nats_url(), user=user, password=password):
            err.print(f"[yellow]{warning}[/yellow]")
        await run_migrations(settings.require_database_url())

    asyncio.run(go())
    console.print("streams, consumers and schema are up to date")


@app.command()
def demo(
    suite: Annotated[str, typer.Option(help="suite to run")] = "customer_support",
    latency_ms: Annotated[float, typer.Option(help="fake model latency per call")] = 40.0,
    concurrency: Annotated[int, typer.Option(help="model calls in flight")] = 16,
) -> None:
    """A real batch through every service on a fresh embedded stack, then everything is stopped."""
    data_dir = _data_dir() / "demo"
    if stack.read_state(data_dir):
        stack.down(data_dir)
    console.print("[bold]Starting nats-server, PostgreSQL, the fake model and five services...[/bold]")
    try:
        st = stack.up(data_dir, fake_model={"latency_ms": str(latency_ms), "jitter_ms": str(latency_ms / 2)})
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
        os.environ["EVALBUS_DATA_DIR"] = str(data_dir)
        get_settings.cache_clear()
        code = asyncio.run(_run(new_batch_id(), config, source, False, 600))
    finally:
        console.print("[bold]Stopping the stack...[/bold]")
        stack.down(data_dir)
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
