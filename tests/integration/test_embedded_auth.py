"""The embedded servers with logins: PostgreSQL asks for its password on loopback (also a data
folder made with trust auth, as earlier versions made them), nats-server runs the locked-down
config with generated passwords and no monitoring port."""

import asyncio
import secrets
from pathlib import Path

import asyncpg
import nats
import pytest

from infra import credentials
from infra.embedded import PG_DB, PG_USER, NatsServer, PostgresServer

pytestmark = pytest.mark.integration


async def login(port: int, password: str | None) -> int:
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user=PG_USER, password=password, database=PG_DB)
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


async def refused(port: int, password: str | None) -> None:
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await login(port, password)


async def test_postgres_requires_its_password(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(24)
    pg = await asyncio.to_thread(PostgresServer(tmp_path / "pg", password=password).start)
    try:
        assert await login(pg.port, password) == 1
        await refused(pg.port, None)
        await refused(pg.port, "wrong")
        assert password in pg.url and pg.psql("SELECT 1").stdout.strip() == "1"
        assert "trust" not in [
            line.split()[-1]
            for line in (pg.pgdata / "pg_hba.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    finally:
        pg.stop()
    # A restart on the same data keeps asking for it.
    pg = await asyncio.to_thread(PostgresServer(tmp_path / "pg", password=password).start)
    try:
        await refused(pg.port, None)
        assert await login(pg.port, password) == 1
    finally:
        pg.stop()


async def test_a_trust_auth_data_folder_is_switched_to_the_password(tmp_path: Path) -> None:
    old = await asyncio.to_thread(PostgresServer(tmp_path / "pg").start)  # as evalbus made it before
    try:
        assert await login(old.port, None) == 1
        assert old.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)").returncode == 0
    finally:
        old.stop()
    password = secrets.token_urlsafe(24)
    pg = await asyncio.to_thread(PostgresServer(tmp_path / "pg", password=password).start)
    try:
        await refused(pg.port, None)
        assert await login(pg.port, password) == 1
        assert pg.psql("SELECT x FROM kept").stdout.strip() == "7"  # the data is still there
    finally:
        pg.stop()


async def test_nats_runs_the_locked_down_config_with_generated_passwords(tmp_path: Path) -> None:
    creds = credentials.load_or_create(tmp_path)
    server = await asyncio.to_thread(NatsServer(tmp_path / "nats", passwords=creds.nats).start)
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=5)
        user, password = creds.login("client")
        nc = await nats.connect(
            server.url, user=user, password=password, allow_reconnect=False, inbox_prefix="_INBOX.client"
        )
        await nc.close()
        conf = (server.data_dir / "nats-server.conf").read_text()
        assert "http: 0" in conf and "listen: 127.0.0.1:" in conf
        assert not any(pw in conf for pw in creds.nats.values())  # passwords come from the environment only
        # A restart (as the supervisor does) on the same port and store.
        port = server.port
        server.stop()
        await asyncio.to_thread(server.start)
        assert server.port == port
        nc = await nats.connect(
            server.url, user=user, password=password, allow_reconnect=False, inbox_prefix="_INBOX.client"
        )
        await nc.close()
    finally:
        server.stop()


async def test_the_embedded_stack_has_an_operator_login_apart_from_the_clients(tmp_path: Path) -> None:
    creds = credentials.load_or_create(tmp_path)
    server = await asyncio.to_thread(NatsServer(tmp_path / "nats", passwords=creds.nats).start)
    try:
        user, password = creds.login(credentials.OPERATOR_ROLE)
        nc = await nats.connect(
            server.url, user=user, password=password, allow_reconnect=False, inbox_prefix="_INBOX.operator"
        )
        await nc.close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):  # not the client's password
            await nats.connect(server.url, user=user, password=creds.nats["client"], allow_reconnect=False)
    finally:
        server.stop()
