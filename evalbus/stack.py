"""The embedded stack: nats-server, PostgreSQL, the fake model and the five services, as real
processes on free loopback ports, with their state in one data folder."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

from contracts.services import NAMES as SERVICE_NAMES
from infra.credentials import CLIENT_ROLE, Credentials, load_or_create
from infra.embedded import NatsServer, PostgresServer, free_port, wait_for_port
from infra.migrate import migrate
from infra.nats_topology import apply_topology
from infra.processes import SERVICES, fake_model_argv, local, metrics_port, service_argv, service_role

log = logging.getLogger("evalbus.stack")
STATE_FILE = "stack.json"


@dataclass
class Stack:
    """Processes of one evalbus deployment; servers are started here or given by URL.

    `locked_down` (what `evalbus up` and `evalbus demo` run): nats-server runs the deployment's
    config with a generated password per role, PostgreSQL requires a generated password, both
    kept owner-only in `<data_dir>/secrets` (infra/credentials.py); the provisioner applies the
    topology, each service logs in as its own role and the CLI as `client`. Without it the
    servers are open (the tests' and benchmarks' throwaway stacks).
    """

    data_dir: Path
    nats_url: str = ""
    database_url: str = ""
    nats: NatsServer | None = None
    postgres: PostgresServer | None = None
    fake_model_port: int | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str], str | None]] = field(default_factory=dict)
    client_credentials: tuple[str, str] | None = None  # for a NATS server that requires a login
    locked_down: bool = False
    credentials: Credentials | None = field(default=None, repr=False)
    service_logins: dict[str, str] = field(default_factory=dict, repr=False)  # role -> password
    metrics_ports: dict[str, int] = field(default_factory=dict)  # process -> its /metrics port

    @property
    def model_base_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_model_port}/v1"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            EVALBUS_NATS_URL=self.nats_url,
            EVALBUS_DATABASE_URL=self.database_url,
            EVALBUS_HEARTBEAT_DIR=str(self.data_dir / "heartbeats"),
            PYTHONUNBUFFERED="1",
        )
        if self.fake_model_port is not None:  # else the services' own default
            env["EVALBUS_MODEL_BASE_URL"] = self.model_base_url
        env.update(extra or {})
        return env

    def start_servers(self) -> None:
        try:
            passwords: dict[str, str] | None = None
            pg_password: str | None = None
            if self.locked_down:
                self.credentials = load_or_create(self.data_dir)
                passwords, pg_password = self.credentials.nats, self.credentials.postgres
                self.service_logins = dict(passwords)
                self.client_credentials = self.credentials.login(CLIENT_ROLE)
            self.nats = NatsServer(self.data_dir / "nats", passwords=passwords).start()
            self.postgres = PostgresServer(self.data_dir / "postgres", password=pg_password).start()
            self.nats_url, self.database_url = self.nats.url, self.postgres.url
            asyncio.run(self.provision())
        except BaseException:
            self.stop()  # leave nothing running behind a failed start
            raise

    async def provision(self) -> None:
        login = self.credentials.login("provisioner") if self.credentials else (None, None)
        await apply_topology(self.nats_url, user=login[0], password=login[1])
        await migrate(self.database_url)

    def spawn(
        self,
        name: str,
        argv: list[str],
        extra_env: Mapping[str, str] | None = None,
        role: str | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one process; `role` is the NATS user it logs in as when the stack has logins."""
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        env = self.env(extra_env)
        if role is not None and role in self.service_logins:
            env.update(EVALBUS_NATS_USER=role, EVALBUS_NATS_PASSWORD=self.service_logins[role])
        proc = subprocess.Popen(local(argv), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.commands[name] = (argv, dict(extra_env or {}), role)
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one process (chaos tests: SIGKILL, SIGSTOP, SIGCONT)."""
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait()

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start a process again with the command and settings it had."""
        argv, extra_env, role = self.commands[name]
        return self.spawn(name, argv, extra_env, role)

    def start_fake_model(self, options: Mapping[str, str] | None = None) -> None:
        self.fake_model_port = self.fake_model_port or free_port()
        argv = fake_model_argv(self.fake_model_port)
        for key, value in (options or {}).items():
            argv += [f"--{key.replace('_', '-')}", value]
        proc = self.spawn("fake-model", argv)
        wait_for_port(self.fake_model_port, 30, proc)

    def start_services(
        self, replicas: Mapping[str, int] | None = None, extra_env: Mapping[str, str] | None = None
    ) -> None:
        # EVALBUS_METRICS_PORT, where set, is the first of the processes' ports: one host, one port each.
        base = int(self.env(extra_env).get("EVALBUS_METRICS_PORT") or 0)
        for service in SERVICES:
            for i in range((replicas or {}).get(service, 1)):
                name = service if i == 0 else f"{service}-{i + 1}"
                env = dict(extra_env or {})
                if base:
                    self.metrics_ports[name] = metrics_port(base, service, i)
                    env["EVALBUS_METRICS_PORT"] = str(self.metrics_ports[name])
                self.spawn(name, service_argv(service), env, role=service_role(service))

    def stop_services(self, sig: int = signal.SIGTERM) -> None:
        stop_pids({name: p.pid for name, p in self.procs.items() if name != "fake-model"}, sig=sig)
        for name in [n for n in self.procs if n != "fake-model"]:
            self.procs[name].wait()
            del self.procs[name]

    def wait_healthy(self, timeout_s: float = 60) -> None:
        """Block until every service answers healthy over NATS (or raise, naming the laggards)."""
        from evalbus.client import connect, service_status  # the CLI's client; imported late

        async def poll() -> list[str]:
            nc = await connect(self.nats_url, *(self.client_credentials or (None, None)))
            try:
                deadline = time.monotonic() + timeout_s
                while True:
                    statuses = [await service_status(nc, n, timeout_s=2) for n in SERVICE_NAMES]
                    sick = [str(st["service"]) for st in statuses if not st.get("healthy")]
                    if not sick or time.monotonic() > deadline:
                        return sick
                    await asyncio.sleep(0.2)
            finally:
                await nc.close()

        sick = asyncio.run(poll())
        if sick:
            raise RuntimeError(f"not healthy after {timeout_s:g}s: {', '.join(sick)}; see {self.data_dir / 'logs'}")

    def check_alive(self) -> list[str]:
        """Names of processes that have exited."""
        return [name for name, p in self.procs.items() if p.poll() is not None]

    def pids(self) -> dict[str, int]:
        """Every process of the stack by name (services as in `evalbus health`), for the state file."""
        pids = {service_role(name): p.pid for name, p in self.procs.items()}
        if self.nats and self.nats.proc:
            pids["nats-server"] = self.nats.proc.pid
        if self.postgres and self.postgres.proc:
            pids["postgres"] = self.postgres.proc.pid
        return pids

    def write_state(self, **extra: object) -> None:
        state = {
            "nats_url": self.nats_url,
            "database_url": without_password(self.database_url),  # the password stays in secrets/
            "model_base_url": self.model_base_url,
            "locked_down": self.locked_down,
            "pids": self.pids(),
            # a pid's start time: `down` never signals a process that merely reuses a recorded pid
            "pid_started": {name: _started(pid) for name, pid in self.pids().items()},
            **extra,
        }
        if isinstance(extra.get("supervisor"), int):
            state["supervisor_started"] = _started(int(extra["supervisor"]))  # type: ignore[call-overload]
        write_state_file(self.data_dir, state)

    def stop(self) -> None:
        stop_pids({name: p.pid for name, p in self.procs.items()})
        self.procs.clear()
        if self.nats:
            self.nats.stop()
        if self.postgres:
            self.postgres.stop()


def stop_pids(pids: Mapping[str, int], timeout_s: float = 20, sig: int = signal.SIGTERM) -> None:
    """Signal each process (SIGTERM: graceful drain), then SIGKILL what is left after the timeout."""
    alive: list[psutil.Process] = []
    for pid in pids.values():
        try:
            proc = psutil.Process(pid)
            proc.send_signal(sig)
            alive.append(proc)
        except psutil.NoSuchProcess:
            continue
    _, still = psutil.wait_procs(alive, timeout=timeout_s)
    for proc in still:
        proc.kill()
    psutil.wait_procs(still, timeout=5)


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.hostname}:{parts.port}"))


def write_state_file(data_dir: Path, state: Mapping[str, object]) -> None:
    """Written whole and renamed (readers never see half a file), owner-only."""
    path = data_dir / STATE_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh, indent=2)
    os.replace(tmp, path)


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return None


def _alive(pid: object, started: object = None) -> bool:
    """Running (not a zombie), and the same process if its start time was recorded."""
    try:
        proc = psutil.Process(int(pid))  # type: ignore[call-overload]
        if isinstance(started, float) and abs(proc.create_time() - started) > 0.01:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError, TypeError):
        return False


def read_state(data_dir: Path) -> dict[str, object] | None:
    path = data_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        state: dict[str, object] = json.loads(path.read_text())
    except ValueError:
        return None
    pids = dict(state.get("pids") or {})  # type: ignore[call-overload]
    if "supervisor" in state:
        pids["supervisor"] = state["supervisor"]
    if not any(_alive(p) for p in pids.values()):
        path.unlink(missing_ok=True)  # left by a stack that is gone
        return None
    return state


UP_TIMEOUT_S = 240.0  # first start: initdb, migrations, five services under a loaded machine
DOWN_TIMEOUT_S = 120.0  # the supervisor drains services (SIGTERM, up to 20 s) then stops the servers


def up(data_dir: Path, fake_model: Mapping[str, str] | None = None) -> dict[str, object]:
    """Start the supervisor of a locked-down stack in the background; returns its state once ready.

    The supervisor (evalbus.supervisor) starts every process, restarts any that exits with
    backoff, and stops them all when `down` signals it.
    """
    if read_state(data_dir):
        raise RuntimeError(f"a stack is already running from {data_dir} (see `evalbus down`)")
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / "supervisor.log").open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "evalbus.supervisor", str(data_dir), json.dumps(dict(fake_model or {}))],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this command and its terminal
        )
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state(data_dir)
        if state and state.get("supervisor") == proc.pid and state.get("status") == "ready":
            return state
        if proc.poll() is not None:
            tail = (logs / "supervisor.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the stack did not start (see {logs}):\n{tail}")
        time.sleep(0.2)
    down(data_dir)
    raise RuntimeError(f"the stack was not ready after {UP_TIMEOUT_S:g}s; see {logs}")


def down(data_dir: Path) -> bool:
    """Stop the stack: the supervisor stops what it owns; whatever is left (a supervisor killed
    with -9 leaves its processes behind) is stopped here from the state file's pids."""
    state = read_state(data_dir)
    if state is None:
        return False
    supervisor = state.get("supervisor")
    if _alive(supervisor, state.get("supervisor_started")):
        stop_pids({"supervisor": int(supervisor)}, timeout_s=DOWN_TIMEOUT_S)  # type: ignore[call-overload]
    started = dict(state.get("pid_started") or {})  # type: ignore[call-overload]
    pids = {k: int(v) for k, v in dict(state["pids"]).items() if _alive(v, started.get(k))}  # type: ignore[call-overload]
    postgres = {k: pids.pop(k) for k in ("postgres",) if k in pids}
    nats_server = {k: pids.pop(k) for k in ("nats-server",) if k in pids}
    stop_pids(pids)
    stop_pids(nats_server)
    stop_pids(postgres, sig=signal.SIGINT)  # PostgreSQL's fast shutdown
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return True
