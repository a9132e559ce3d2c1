"""The embedded stack: nats-server, PostgreSQL, the fake model and the five services, as real
processes on free loopback ports, with their state in one data folder."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from infra.embedded import NatsServer, PostgresServer, free_port, wait_for_port
from infra.migrate import migrate
from infra.nats_topology import apply_topology
from infra.processes import SERVICES, fake_model_argv, local, service_argv

log = logging.getLogger("evalbus.stack")
STATE_FILE = "stack.json"


@dataclass
class Stack:
    """Processes of one evalbus deployment; servers are started here or given by URL."""

    data_dir: Path
    nats_url: str = ""
    database_url: str = ""
    nats: NatsServer | None = None
    postgres: PostgresServer | None = None
    fake_model_port: int | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    client_credentials: tuple[str, str] | None = None  # for a NATS server that requires a login

    @property
    def model_base_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_model_port}/v1"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            EVALBUS_NATS_URL=self.nats_url,
            EVALBUS_DATABASE_URL=self.database_url,
            EVALBUS_MODEL_BASE_URL=self.model_base_url,
            EVALBUS_HEARTBEAT_DIR=str(self.data_dir / "heartbeats"),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra or {})
        return env

    def start_servers(self) -> None:
        try:
            self.nats = NatsServer(self.data_dir / "nats").start()
            self.postgres = PostgresServer(self.data_dir / "postgres").start()
            self.nats_url, self.database_url = self.nats.url, self.postgres.url
            asyncio.run(self.provision())
        except BaseException:
            self.stop()  # leave nothing running behind a failed start
            raise

    async def provision(self) -> None:
        await apply_topology(self.nats_url)
        await migrate(self.database_url)

    def spawn(self, name: str, argv: list[str], extra_env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        env = self.env(extra_env)
        proc = subprocess.Popen(local(argv), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        self.commands[name] = (argv, dict(extra_env or {}))
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one process (chaos tests: SIGKILL, SIGSTOP, SIGCONT)."""
        proc = self.procs[name]
        proc.send_signal(sig)
        if sig == signal.SIGKILL:
            proc.wait()

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        """Start a process again with the command and settings it had."""
        argv, extra_env = self.commands[name]
        return self.spawn(name, argv, extra_env)

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
        for service in SERVICES:
            for i in range((replicas or {}).get(service, 1)):
                name = service if i == 0 else f"{service}-{i + 1}"
                self.spawn(name, service_argv(service), extra_env)

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
                    names = [s.replace("_", "-") for s in SERVICES]
                    statuses = [await service_status(nc, n, timeout_s=2) for n in names]
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

    def write_state(self) -> None:
        assert self.nats and self.postgres and self.nats.proc and self.postgres.proc
        state = {
            "nats_url": self.nats_url,
            "database_url": self.database_url,
            "model_base_url": self.model_base_url,
            "pids": {
                **{name: p.pid for name, p in self.procs.items()},
                "nats-server": self.nats.proc.pid,
                "postgres": self.postgres.proc.pid,
            },
        }
        (self.data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))

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


def read_state(data_dir: Path) -> dict[str, object] | None:
    path = data_dir / STATE_FILE
    if not path.exists():
        return None
    state: dict[str, object] = json.loads(path.read_text())
    pids = state.get("pids")
    if isinstance(pids, dict) and not any(psutil.pid_exists(int(p)) for p in pids.values()):
        path.unlink()  # left by a stack that is gone
        return None
    return state


def up(data_dir: Path, fake_model: Mapping[str, str] | None = None) -> Stack:
    """Start everything and record it, for `evalbus down` to stop."""
    if read_state(data_dir):
        raise RuntimeError(f"a stack is already running from {data_dir} (see `evalbus down`)")
    stack = Stack(data_dir)
    try:
        stack.start_servers()
        stack.start_fake_model(fake_model)
        stack.start_services()
        stack.wait_healthy()
        stack.write_state()
    except BaseException:
        stack.stop()
        raise
    return stack


def down(data_dir: Path) -> bool:
    state = read_state(data_dir)
    if state is None:
        return False
    pids = dict(state["pids"])  # type: ignore[call-overload]
    postgres = {k: pids.pop(k) for k in ("postgres",) if k in pids}
    nats_server = {k: pids.pop(k) for k in ("nats-server",) if k in pids}
    stop_pids(pids)
    stop_pids(nats_server)
    stop_pids(postgres, sig=signal.SIGINT)  # PostgreSQL's fast shutdown
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    return True
