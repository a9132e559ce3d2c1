"""Commands that run the stack: start and stop the embedded one, create the streams and schema
on configured servers, and ask the services how they are (over NATS, or a container's heartbeat)."""

import asyncio
import json
import sys
import time
from typing import Annotated

import typer

from contracts.services import NAMES as SERVICE_NAMES
from evalbus import client, stack
from evalbus.cli.common import JsonFlag, connect, console, data_dir, err
from infra import credentials
from services.runtime.messaging.health import heartbeat_path
from services.runtime.settings import get_settings


def health(as_json: JsonFlag = False) -> None:
    """Ask every service for its status over NATS; exits 1 if any is missing or unhealthy."""

    async def go() -> list[dict[str, object]]:
        nc = await connect()
        try:
            return [await client.service_status(nc, svc) for svc in SERVICE_NAMES]
        finally:
            await nc.drain()

    statuses = asyncio.run(go())
    # The embedded stack's supervisor counts restarts; against other servers there is no count.
    state = None if get_settings().nats_url else stack.read_state(data_dir())
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


def up(
    latency_ms: Annotated[float, typer.Option(help="fake model latency per call")] = 20.0,
) -> None:
    """Start the embedded stack (nats-server, PostgreSQL, fake model, five services) in the background,
    locked down (per-service logins), under a supervisor that restarts a process that exits."""
    where = data_dir()
    try:
        st = stack.up(where, fake_model={"latency_ms": str(latency_ms)})
    except RuntimeError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"evalbus is up (data in {where}, logs in {where / 'logs'})")
    console.print(f"  EVALBUS_NATS_URL={st['nats_url']}  (as user client; every role's password is in")
    console.print(f"  {credentials.credentials_path(where)}, readable by you only)")
    console.print(f"  PostgreSQL {st['database_url']}")
    console.print(f"  fake model: {st['model_base_url']}")


def down() -> None:
    """Stop the embedded stack that `evalbus up` started (its supervisor and every process)."""
    if stack.down(data_dir()):
        console.print("evalbus is down")
    else:
        console.print("no embedded stack was running")


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
