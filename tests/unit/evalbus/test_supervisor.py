"""The embedded stack supervisor's restart policy."""

from evalbus.supervisor import BACKOFF_MAX_S, STABLE_AFTER_S, Supervisor, Unit


class Proc:
    """A process that can be made to exit; start() brings it back."""

    def __init__(self) -> None:
        self.up = True
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.up = True


def test_an_exited_process_is_restarted_with_doubling_backoff() -> None:
    now = [0.0]
    proc = Proc()
    unit = Unit("scorer", lambda: proc.up, proc.start)
    sup = Supervisor([unit], clock=lambda: now[0])
    assert not sup.check() and proc.starts == 0  # running: nothing to do

    delays = []
    for _ in range(7):
        proc.up = False
        assert not sup.check()  # noticed: the restart waits for its backoff
        assert unit.retry_at is not None
        delays.append(unit.retry_at - now[0])
        now[0] = unit.retry_at - 0.01
        assert not sup.check() and not proc.up  # not yet
        now[0] = unit.retry_at
        assert sup.check() and proc.up
    assert delays == [1, 2, 4, 8, 16, BACKOFF_MAX_S, BACKOFF_MAX_S]
    assert sup.restarts() == {"scorer": 7} and proc.starts == 7


def test_backoff_starts_over_after_a_stable_run() -> None:
    now = [0.0]
    proc = Proc()
    unit = Unit("judge", lambda: proc.up, proc.start)
    sup = Supervisor([unit], clock=lambda: now[0])
    for _ in range(3):
        proc.up = False
        sup.check()
        now[0] = unit.retry_at  # type: ignore[assignment]
        sup.check()
    now[0] += STABLE_AFTER_S
    sup.check()  # it stayed up: the next exit is a first exit
    proc.up = False
    sup.check()
    assert unit.retry_at == now[0] + 1


def test_a_failed_restart_is_tried_again_later() -> None:
    now = [0.0]
    calls = []

    def start() -> None:
        calls.append(now[0])
        raise OSError("port in use")

    unit = Unit("nats-server", lambda: False, start)
    sup = Supervisor([unit], clock=lambda: now[0])
    sup.check()
    now[0] = 1.0
    assert not sup.check() and calls == [1.0] and unit.restarts == 0
    assert unit.retry_at == 1.0 + 2  # the next try backs off further
