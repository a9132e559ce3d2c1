"""Real servers for the whole test session: a nats-server with JetStream and a PostgreSQL 16,
started from the pip packages on free ports (or the servers named by EVALBUS_TEST_NATS_URL and
EVALBUS_TEST_DATABASE_URL). Streams, consumers and the schema are applied once."""

import asyncio
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.pathlib import rm_rf

from infra.embedded import NatsServer, PostgresServer
from infra.migrate import migrate
from infra.nats_topology import apply_topology


def pytest_configure(config: pytest.Config) -> None:
    """A temporary root of this session's own. pytest's shared default (`/tmp/pytest-of-<user>`)
    is reset to mode 0700 by every other pytest session that starts, and its old numbered folders
    are deleted by them: an embedded PostgreSQL run as the `pgserver` user (when tests run as root)
    then loses its way to its data folder mid-run."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = Path(tempfile.gettempdir()) / f"evalbus-pytest-{os.getpid()}"
        config._evalbus_own_basetemp = True  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Kept after a failure, for its logs and data folders.
    if getattr(session.config, "_evalbus_own_basetemp", False) and exitstatus == 0:
        rm_rf(Path(session.config.option.basetemp))


@dataclass
class Servers:
    nats_url: str
    database_url: str
    data_dir: Path
    nats: NatsServer | None
    postgres: PostgresServer | None


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    data_dir = Path(tempfile.mkdtemp(prefix="evalbus-test-"))
    nats_url = os.environ.get("EVALBUS_TEST_NATS_URL")
    database_url = os.environ.get("EVALBUS_TEST_DATABASE_URL")
    nats = None if nats_url else NatsServer(data_dir / "nats").start()
    postgres = None if database_url else PostgresServer(data_dir / "postgres").start()
    found = Servers(
        nats_url=nats_url or (nats.url if nats else ""),
        database_url=database_url or (postgres.url if postgres else ""),
        data_dir=data_dir,
        nats=nats,
        postgres=postgres,
    )

    async def provision() -> None:
        await apply_topology(found.nats_url)
        await migrate(found.database_url)

    asyncio.run(provision())
    try:
        yield found
    finally:
        if nats:
            nats.stop()
        if postgres:
            postgres.stop()
