"""The embedded stack's supervisor, what compose's `restart: unless-stopped` is for containers.

`evalbus up` starts it in the background (`python -m evalbus.supervisor <data dir> <fake model
options>`). It starts the locked-down stack (nats-server, PostgreSQL, the fake model, the five
services) as its own children, records them in `<data dir>/stack.json`, and then watches: a
process that exits is started again after a backoff that doubles with each consecutive failure
(1 s, 2 s, 4 s ... at most 30 s; a process that stayed up a minute starts over at 1 s). Restart
counts go to the state file, where `evalbus health` reads them. SIGTERM or SIGINT (what
`evalbus down` sends) stops every process it owns, then the supervisor itself.
"""

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from evalbus.stack import STATE_FILE, Stack
from infra.processes import service_role

log = logging.getLogger("evalbus.supervisor")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # up this long: the next failure is a first failure again
CHECK_EVERY_S = 0.5


@dataclass
class Unit:
    """One supervised process: how to tell it is running and how to start it again."""

    name: str
    running: Callable[[], bool]
    start: Callable[[], object]
    restarts: int = 0
    failures: int = 0  # consecutive, for the backoff
    started_at: float = field(default_factory=time.monotonic)
    retry_at: float | None = None  # set once its exit is noticed

    def backoff_s(self) -> float:
        return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2**self.failures)


class Supervisor:
    def __init__(self, units: list[Unit], clock: Callable[[], float] = time.monotonic) -> None:
        self.units = units
        self.clock = clock

    def check(self) -> bool:
        """One round: restart what is due; True if a restart happened (the state changed)."""
        changed = False
        now = self.clock()
        for unit in self.units:
            if unit.running():
                if unit.failures and now - unit.started_at >= STABLE_AFTER_S:
                    unit.failures = 0
                continue
            if unit.retry_at is None:
                unit.retry_at = now + unit.backoff_s()
                log.warning("%s exited; restarting in %.0f s", unit.name, unit.backoff_s())
                continue
            if now < unit.retry_at:
                continue
            unit.failures += 1
            unit.started_at = now
            unit.retry_at = None
            try:
                unit.start()
            except Exception:
                log.exception("could not restart %s", unit.name)
                unit.retry_at = now + unit.backoff_s()
                continue
            unit.restarts += 1
            changed = True
            log.warning("%s restarted (restart %d)", unit.name, unit.restarts)
        return changed

    def restarts(self) -> dict[str, int]:
        return {u.name: u.restarts for u in self.units}


def units_of(stack: Stack) -> list[Unit]:
    """The stack's services and fake model, then its two servers."""
    units = [
        Unit(service_role(name), lambda n=name: stack.procs[n].poll() is None, lambda n=name: stack.restart(n))  # type: ignore[misc]
        for name in list(stack.procs)
    ]
    nats, postgres = stack.nats, stack.postgres
    assert nats is not None and postgres is not None
    units.append(Unit("nats-server", lambda: nats.proc is not None and nats.proc.poll() is None, nats.start))
    units.append(Unit("postgres", lambda: postgres.proc is not None and postgres.proc.poll() is None, postgres.start))
    return units


class Stopping(Exception):
    """SIGTERM or SIGINT arrived."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # Once: a second signal must not interrupt the shutdown the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopping(signal.Signals(signum).name)


def run(data_dir: Path, fake_model: dict[str, str]) -> int:
    stack = Stack(data_dir, locked_down=True)
    started = time.time()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        stack.write_state(supervisor=os.getpid(), status="starting", started=started)
        stack.start_servers()
        stack.start_fake_model(fake_model)
        stack.start_services()
        stack.wait_healthy(timeout_s=120)
        supervisor = Supervisor(units_of(stack))
        stack.write_state(supervisor=os.getpid(), status="ready", started=started, restarts=supervisor.restarts())
        log.info("stack ready in %s; supervising %d processes", data_dir, len(supervisor.units))
        while True:
            if supervisor.check():
                stack.write_state(
                    supervisor=os.getpid(), status="ready", started=started, restarts=supervisor.restarts()
                )
            time.sleep(CHECK_EVERY_S)
    except Stopping as why:
        log.info("%s: stopping the stack", why)
        return 0
    except Exception:
        log.exception("the stack failed")
        return 1
    finally:
        stack.stop()
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        log.info("stopped")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    data_dir = Path(sys.argv[1])
    fake_model = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    sys.exit(run(data_dir, fake_model))


if __name__ == "__main__":
    main()
