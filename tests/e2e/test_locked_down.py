"""The pipeline locked down, as `evalbus up` runs it by default and as a deployment runs it.

Two stacks: the Stack class locked down (own nats-server with the deployment config and
generated passwords, own PostgreSQL with a password, services as their own users, a shared rate
budget) on which every command the README gives a client runs as `client`; and a real
`evalbus up` (supervisor, credentials in the data folder) on which a kill -9'd service comes
back, `evalbus health` counts the restart, and `evalbus down` leaves no process behind.
"""

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import orjson
import psutil
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from contracts import subjects
from contracts.subjects import endpoint_token
from contracts.topology import KV_RATES
from evalbus import stack as stack_mod
from evalbus.client import inbox_prefix
from evalbus.stack import Stack
from infra import credentials
from infra.processes import SERVICES, service_role

pytestmark = pytest.mark.e2e
ROLES = [service_role(s) for s in SERVICES]
EVALBUS = str(Path(sys.executable).parent / "evalbus")


def write_suite(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Where is order VL-{i}?", "id": f"c{i}"}) + "\n" for i in range(n)))
    return path


def violations(*logs: Path) -> list[str]:
    return [line for p in logs if p.exists() for line in p.read_text().splitlines() if "violation" in line.lower()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("locked"), locked_down=True)
    try:
        st.start_servers()
        st.start_fake_model({"latency_ms": "2"})
        # a shared rate budget too, so its KV bucket is used under the same permissions
        rates = json.dumps({st.model_base_url: {"rpm": 6000, "tpm": 10_000_000}})
        st.start_services(extra_env={"EVALBUS_RATE_LIMITS": rates})
        st.wait_healthy()
        yield st
    finally:
        st.stop()


def client_env(st: Stack, role: str = "client") -> dict[str, str]:
    assert st.credentials
    return {"EVALBUS_NATS_USER": role, "EVALBUS_NATS_PASSWORD": st.credentials.nats[role]}


async def connect_as(st: Stack, role: str) -> tuple[Client, list[str]]:
    assert st.credentials
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        st.nats_url,
        user=role,
        password=st.credentials.nats[role],
        inbox_prefix=inbox_prefix(role),
        error_cb=on_error,
        allow_reconnect=False,
    )
    return nc, errors


async def test_a_batch_runs_with_least_privilege_users(stack: Stack, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    suite = write_suite(tmp_path / "locked.jsonl", 20)
    client = client_env(stack)
    batch_id = "b-locked-" + secrets.token_hex(3)
    run = await asyncio.to_thread(
        cli,
        "run",
        str(suite),
        "--model",
        "evalbus-fake",
        "--batch-id",
        batch_id,
        "--json",
        "--wait-timeout",
        "120",
        env=client,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["completed"] == 20
    status = await asyncio.to_thread(cli, "status", batch_id, "--json", env=client)
    assert status.returncode == 0 and json.loads(status.stdout)["scored"] == 20
    anonymous = await asyncio.to_thread(cli, "status", batch_id, "--json")
    assert anonymous.returncode == 3 and "cannot connect to nats" in anonymous.stderr.lower()  # no login
    nc, _ = await connect_as(stack, "chat-runner")  # the role that reads and sets the budget
    kv = await nc.jetstream().key_value(KV_RATES)
    bucket = await kv.get(f"rate.{endpoint_token(stack.model_base_url)}")  # the budget was shared in KV
    assert bucket.value and b'"req"' in bucket.value
    await nc.close()
    assert violations(*(stack.data_dir / "logs").glob("*.log"), stack.data_dir / "nats" / "nats-server.log") == []


async def test_every_readme_client_command_works_as_client(stack: Stack, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = client_env(stack)
    batch_id = "b-readme-" + secrets.token_hex(3)
    suite = write_suite(tmp_path / "readme.jsonl", 8)
    nc, errors = await connect_as(stack, "client")
    lifecycle: list[str] = []

    async def on_event(msg: Msg) -> None:
        lifecycle.append(msg.subject.rsplit(".", 1)[-1])

    # `nats sub 'evalbus.v1.progress.<id>'` and `nats sub 'evalbus.v1.batch.<id>.batch.*'`
    progress_sub = await nc.subscribe(subjects.progress(batch_id))
    await nc.subscribe(subjects.batch_lifecycle(batch_id), cb=on_event)

    async def ok(*args: str, as_user: dict[str, str] = env) -> subprocess.CompletedProcess[str]:
        done = await asyncio.to_thread(cli, *args, env=as_user)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    await ok("run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--json", "--wait-timeout", "120")
    assert (await progress_sub.next_msg(timeout=5)).data
    assert "accepted" in lifecycle and "completed" in lifecycle
    for args in (
        ("status", batch_id, "--json"),
        ("report", batch_id, "--json"),
        ("quality", batch_id, "--json"),
        ("samples", batch_id, "--filter", "status=scored", "--json"),
        ("history", "--limit", "5", "--json"),
        ("export", batch_id, "--out", str(tmp_path / "out.jsonl")),
        ("health", "--json"),
    ):
        await ok(*args)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 8
    # Resume re-drives work: the operator's (a client is refused, tests/integration/test_nats_permissions.py).
    await ok("resume", batch_id, "--json", as_user=client_env(stack, "operator"))
    # `nats req evalbus.v1.api.batch.report '{"batch_id": ...}'`
    reply = await nc.request(subjects.api("batch.report"), orjson.dumps({"batch_id": batch_id}), timeout=10)
    assert orjson.loads(reply.data)["completed"] == 8

    # The late joiner: `nats sub ... --stream EVALBUS_PROGRESS --last-per-subject`.
    js = nc.jetstream()
    assert (await js.stream_info(subjects.STREAM_PROGRESS)).config.name == subjects.STREAM_PROGRESS
    late = await js.subscribe(
        subjects.progress(batch_id),
        stream=subjects.STREAM_PROGRESS,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        flow_control=True,
        idle_heartbeat=5.0,
        manual_ack=True,
    )
    last = orjson.loads((await late.next_msg(timeout=5)).data)
    assert last["batch_id"] == batch_id and last["scored"] + last["failed"] == 8
    await late.unsubscribe()

    # `nats micro ls` / `nats micro info evalbus-recorder`: every service answers $SRV.PING and INFO.
    for verb in ("PING", "INFO"):
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.{verb}", b"", reply=inbox)
        names: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                names.append(orjson.loads((await sub.next_msg(timeout=1)).data)["name"])
        assert sorted(names) == sorted([f"evalbus-{r}" for r in ROLES] + ["evalbus-recorder"]), names

    # `evalbus cancel` of a fresh batch (the command is taken; the generator records it)
    cancelled = "b-cancel-" + secrets.token_hex(3)
    await ok("cancel", cancelled)
    await nc.close()
    assert errors == []
    assert violations(*(stack.data_dir / "logs").glob("*.log"), stack.data_dir / "nats" / "nats-server.log") == []


async def test_client_cannot_forge_a_completion_or_read_other_inboxes(stack: Stack) -> None:
    nc, errors = await connect_as(stack, "client")
    try:
        await nc.publish(subjects.batch_event("b-x", "batch", "completed"), b"{}")
        await nc.subscribe("_INBOX.>")
        await nc.flush()
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    text = " ".join(errors).lower()
    assert 'publish to "evalbus.v1.batch.b-x.batch.completed"' in text and 'subscription to "_inbox.>"' in text


# -- `evalbus up`: the default, supervised -------------------------------------------------------------


def evalbus(data_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed command with nothing but a data folder: it finds the stack and its login there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALBUS_")}
    env["EVALBUS_DATA_DIR"] = str(data_dir)
    return subprocess.run([EVALBUS, *args], env=env, capture_output=True, text=True, timeout=timeout)


def stack_pids(data_dir: Path) -> dict[str, int]:
    state = stack_mod.read_state(data_dir)
    assert state is not None
    return {**dict(state["pids"]), "supervisor": int(state["supervisor"])}  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def up_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    data_dir = tmp_path_factory.mktemp("up") / ".evalbus"
    started = evalbus(data_dir, "up", timeout=400)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield data_dir
    finally:
        evalbus(data_dir, "down")


async def health(data_dir: Path) -> list[dict[str, object]]:
    done = await asyncio.to_thread(evalbus, data_dir, "health", "--json")
    return list(json.loads(done.stdout))


async def test_up_is_locked_down_and_the_cli_logs_in_as_client(up_stack: Path, tmp_path: Path) -> None:
    state = stack_mod.read_state(up_stack)
    assert state and state["locked_down"] is True
    creds = credentials.read(up_stack)
    assert creds is not None
    path = credentials.credentials_path(up_stack)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert creds.postgres not in json.dumps(state)  # the state file names no password
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(str(state["nats_url"]), allow_reconnect=False, connect_timeout=5)
    # PostgreSQL: on loopback and only with the password.
    port = int(str(state["database_url"]).rsplit(":", 1)[1].split("/")[0])
    with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
        await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="evalbus")
    pg = psutil.Process(stack_pids(up_stack)["postgres"])
    assert {c.laddr.ip for c in pg.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN} == {"127.0.0.1"}

    suite = write_suite(tmp_path / "up.jsonl", 6)
    run = await asyncio.to_thread(evalbus, up_stack, "run", str(suite), "--model", "evalbus-fake", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["completed"] == 6
    # `evalbus resume` logs in as the stack's operator, from the same credentials file.
    resumed = await asyncio.to_thread(evalbus, up_stack, "resume", json.loads(run.stdout)["batch_id"], "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["redriven"] == 0  # a finished batch has nothing to re-drive
    statuses = await health(up_stack)
    assert all(s["healthy"] and s["restarts"] == 0 for s in statuses), statuses
    assert violations(*(up_stack / "logs").glob("*.log"), up_stack / "nats" / "nats-server.log") == []


async def test_a_killed_service_is_restarted_and_counted(up_stack: Path, tmp_path: Path) -> None:
    before = stack_pids(up_stack)
    os.kill(before["scorer"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        scorer = next(s for s in await health(up_stack) if s["service"] == "scorer")
        if scorer["healthy"] and scorer["restarts"] == 1:
            break
        assert time.monotonic() < deadline, scorer
        await asyncio.sleep(1)
    after = stack_pids(up_stack)
    assert after["scorer"] != before["scorer"] and psutil.pid_exists(after["scorer"])
    assert {k: v for k, v in after.items() if k != "scorer"} == {k: v for k, v in before.items() if k != "scorer"}
    shown = await asyncio.to_thread(evalbus, up_stack, "health")
    assert "restarts 1" in next(line for line in shown.stdout.splitlines() if line.startswith("scorer"))
    suite = write_suite(tmp_path / "again.jsonl", 4)  # and the pipeline works on
    run = await asyncio.to_thread(evalbus, up_stack, "run", str(suite), "--model", "evalbus-fake", "--json")
    assert run.returncode == 0 and json.loads(run.stdout)["completed"] == 4, run.stderr


async def test_down_stops_every_process(up_stack: Path) -> None:
    pids = stack_pids(up_stack)
    procs = [psutil.Process(p) for p in pids.values()]
    children = [c for c in psutil.Process(pids["supervisor"]).children(recursive=True)]
    done = await asyncio.to_thread(evalbus, up_stack, "down")
    assert done.returncode == 0 and "down" in done.stdout
    _, alive = psutil.wait_procs(procs + children, timeout=10)
    assert alive == [], [(p.pid, p.name()) for p in alive]
    assert stack_mod.read_state(up_stack) is None
    assert "no embedded stack" in (await asyncio.to_thread(evalbus, up_stack, "down")).stdout
