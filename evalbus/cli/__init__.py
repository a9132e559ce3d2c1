"""`evalbus`: run a batch and watch it, read recorded batches, start and stop the embedded stack."""

from collections.abc import Callable

import typer

from evalbus.cli import queries, run, stack

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

# Registered in one place, in the order `evalbus --help` lists them.
COMMANDS: list[tuple[str, Callable[..., None]]] = [
    ("run", run.run),
    ("status", run.status),
    ("report", queries.report),
    ("quality", queries.quality),
    ("samples", queries.samples),
    ("history", queries.history),
    ("export", queries.export_batch),
    ("cancel", run.cancel),
    ("resume", run.resume),
    ("health", stack.health),
    ("alive", stack.alive),
    ("up", stack.up),
    ("down", stack.down),
    ("migrate", stack.migrate),
    ("demo", run.demo),
]
for name, command in COMMANDS:
    app.command(name)(command)


def main() -> None:
    app()
