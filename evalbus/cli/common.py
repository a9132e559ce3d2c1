"""What every command shares: the consoles, exit codes, the `--json` flag, and the connection to
NATS (found and logged in to the same way by every command)."""

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from nats.aio.client import Client
from pydantic import BaseModel
from rich.console import Console

from evalbus import client, stack
from infra import credentials
from services.runtime.settings import get_settings

console = Console()
err = Console(stderr=True)

EXIT_REJECTED = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4

JsonFlag = Annotated[bool, typer.Option("--json")]

T = TypeVar("T")


def data_dir() -> Path:
    return get_settings().data_dir


def nats_login(role: str = credentials.CLIENT_ROLE) -> tuple[str, str | None, str | None]:
    """URL, user and password: EVALBUS_NATS_URL with EVALBUS_NATS_USER/PASSWORD, else the
    embedded stack that `evalbus up` started, as `role` (`client`, or `operator` for commands
    that re-drive work) with the password it generated."""
    settings = get_settings()
    if settings.nats_url:
        return (settings.nats_url, *settings.nats_credentials())
    state = stack.read_state(settings.data_dir)
    if state is None:
        err.print("[red]No NATS server: set EVALBUS_NATS_URL or start the embedded stack with `evalbus up`.[/red]")
        raise typer.Exit(EXIT_UNREACHABLE)
    creds = credentials.read(settings.data_dir) if state.get("locked_down") else None
    try:
        user, password = creds.login(role) if creds else settings.nats_credentials()
    except LookupError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_UNREACHABLE) from exc
    return str(state["nats_url"]), user, password


async def connect(role: str = credentials.CLIENT_ROLE) -> Client:
    try:
        return await client.connect(*nats_login(role))
    except client.ConnectError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(EXIT_UNREACHABLE) from exc


async def call_recorder(
    call: Callable[[Client], Awaitable[T]], role: str = credentials.CLIENT_ROLE
) -> tuple[T | None, int]:
    """One call that needs the recorder: (its result, 0), or (None, exit code) after saying why."""
    nc = await connect(role)
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


async def ask_recorder(
    ask: Callable[[Client], Awaitable[BaseModel]],
    show: Callable[[Any], None],
    as_json: bool,
    role: str = credentials.CLIENT_ROLE,
) -> int:
    """One request to the recorder's API, printed as JSON or for people; errors become exit codes."""
    answer, code = await call_recorder(ask, role)
    if answer is None:
        return code
    if as_json:
        sys.stdout.write(answer.model_dump_json(indent=2) + "\n")
    else:
        show(answer)
    return 0
