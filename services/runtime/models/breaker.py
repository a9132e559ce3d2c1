"""A circuit breaker per model endpoint: aiobreaker, behind one small wrapper of ours.

The wrapper fixes what aiobreaker gets wrong for us (see shared notes): it keeps its own
monotonic clock for the pause (aiobreaker mixes local and UTC time), admits a single caller at
a time while the breaker is not closed (aiobreaker's half-open admits everyone), and counts only
failures that say the endpoint is unhealthy. While open, calls are not failed: they wait out the
pause and then go one by one; the first success closes the breaker and restores concurrency.

With a `Sharing` (services/runtime/models/shared_breaker.py) the replicas of a service share
the breaker's state: an opening here opens the others (`follow`), the half-open probe is made by
the one replica that claims it, and only the replica that changed the shared state reports the
change, so one opening is one event whatever the number of replicas.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar

from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener, CircuitBreakerState

from services.runtime.observability import metrics

T = TypeVar("T")
StateChange = Callable[[str, str, str], None]  # endpoint, old state, new state
# What a replica may do once its pause is over: probe, see that another closed it, or wait (seconds).
Claim = tuple[Literal["probe", "closed", "wait"], float]

log = logging.getLogger("evalbus.breaker")

_NAMES = {
    CircuitBreakerState.CLOSED: "closed",
    CircuitBreakerState.OPEN: "open",
    CircuitBreakerState.HALF_OPEN: "half_open",
}
_OWN = "own"  # a change this replica made and has not shared yet
_AGREED = "agreed"  # a change this replica made and already shared (the probe it claimed)


class Sharing(Protocol):
    """The state shared by the replicas of a service (shared_breaker.SharedBreakers)."""

    def attach(self, breaker: "ProviderBreaker") -> None: ...

    async def claim_probe(self, breaker: "ProviderBreaker") -> Claim: ...

    async def transition(self, breaker: "ProviderBreaker", new: str) -> bool: ...


class _Passed:
    """Carries an error that must not count against the endpoint past the breaker (as a value:
    aiobreaker would count any exception, and its `exclude` resets the failure streak)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Listener(CircuitBreakerListener):  # type: ignore[misc]
    def __init__(self, owner: "ProviderBreaker") -> None:
        self._owner = owner

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        self._owner._changed(_NAMES[old.state], _NAMES[new.state])


class ProviderBreaker:
    def __init__(
        self,
        endpoint: str,
        *,
        fail_max: int,
        reset_s: float,
        counts: Callable[[BaseException], bool],
        on_change: StateChange | None = None,
        sharing: Sharing | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.reset_s = reset_s
        self._counts = counts
        self._on_change = on_change
        self._sharing = sharing
        self._open_until = 0.0
        self._origin = _OWN  # who makes the change under way: _OWN, _AGREED or the replica followed
        self._wakeup = asyncio.Event()  # set (and replaced) when another replica changes the state
        self._reporting: set[asyncio.Task[None]] = set()
        self._one_at_a_time = asyncio.Lock()
        self._breaker = CircuitBreaker(
            fail_max=fail_max, timeout_duration=timedelta(seconds=reset_s), listeners=[_Listener(self)]
        )
        if sharing is not None:
            sharing.attach(self)

    @property
    def state(self) -> str:
        return _NAMES[self._breaker.current_state]

    @property
    def failures(self) -> int:
        """Consecutive unhealthy answers counted so far (this replica's)."""
        return int(self._breaker.fail_counter)

    def _changed(self, old: str, new: str) -> None:
        if new == "open":
            self._open_until = time.monotonic() + self.reset_s
        origin = self._origin
        followed = origin not in (_OWN, _AGREED)
        log.log(
            logging.WARNING if new == "open" else logging.INFO,
            "breaker endpoint=%s old=%s new=%s failures=%d by=%s",
            self.endpoint,
            old,
            new,
            self.failures,
            f"replica:{origin}" if followed else "local",
            extra={"endpoint": self.endpoint, "old_state": old, "new_state": new, "failures": self.failures},
        )
        metrics.breaker_changed(self.endpoint, old, new)  # this replica's state, whoever changed it
        if followed:
            return  # the replica that changed the shared state reports it
        if self._sharing is None or origin == _AGREED:
            self._report(old, new)
            return
        task = asyncio.get_running_loop().create_task(self._share(old, new))
        self._reporting.add(task)  # a reference, or the task may be collected before it runs
        task.add_done_callback(self._reporting.discard)

    async def _share(self, old: str, new: str) -> None:
        assert self._sharing is not None
        if await self._sharing.transition(self, new):
            self._report(old, new)

    def _report(self, old: str, new: str) -> None:
        if self._on_change is not None:
            self._on_change(self.endpoint, old, new)

    def follow(self, state: str, remaining_s: float, by: str) -> None:
        """Another replica changed the shared state: open here for `remaining_s` more (also while
        it probes: `half_open`), or close. A probe of this replica's own is left to finish."""
        current = self.state
        self._origin = by
        try:
            if state == "closed" and current == "open":
                self._breaker.close()
            elif state != "closed" and current == "closed":
                self._breaker.open()
        finally:
            self._origin = _OWN
        if state != "closed" and self.state == "open":
            self._open_until = time.monotonic() + max(0.0, remaining_s)
        self._wakeup.set()  # waiters look again
        self._wakeup = asyncio.Event()

    async def _wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less if another replica changes the state meanwhile."""
        if seconds <= 0:
            return
        wakeup = self._wakeup
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wakeup.wait(), seconds)

    async def _through(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def counted() -> T | _Passed:
            try:
                return await fn()
            except Exception as exc:
                if self._counts(exc):
                    raise
                return _Passed(exc)

        result = await self._breaker.call_async(counted)
        if isinstance(result, _Passed):
            raise result.error
        return result  # type: ignore[no-any-return]

    async def _may_probe(self) -> bool:
        """With sharing, whether this replica makes the half-open probe now (it enters half-open
        if so); False when another replica closed the breaker or holds the probe (waited for)."""
        assert self._sharing is not None
        verdict, wait_s = await self._sharing.claim_probe(self)
        if verdict == "probe":
            # The other replicas know (the claim), and aiobreaker's own clock is not asked.
            self._origin = _AGREED
            try:
                self._breaker.half_open()
            finally:
                self._origin = _OWN
            return True
        if verdict == "closed":
            self.follow("closed", 0.0, "shared")
        else:
            await self._wait(wait_s)
        return False

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run `fn` through the breaker; its own errors come out unchanged."""
        while True:
            if self.state == "closed":
                try:
                    return await self._through(fn)
                except CircuitBreakerError as exc:
                    if exc.__cause__ is not None:  # this call tripped it: its own error
                        raise exc.__cause__ from None
                    continue  # it opened meanwhile: wait like everyone else
            await self._wait(self._open_until - time.monotonic())
            async with self._one_at_a_time:
                if self.state == "closed":
                    # A probe closed it while this caller queued: go at full concurrency. (Waiters
                    # that kept calling one by one here, while new callers queued behind them,
                    # held a busy service at one call at a time for good.)
                    continue
                if self.state == "open" and self._open_until > time.monotonic():
                    continue  # another replica opened it again meanwhile
                if self._sharing is not None and self.state == "open" and not await self._may_probe():
                    continue
                try:
                    return await self._through(fn)
                except CircuitBreakerError as exc:
                    if exc.__cause__ is not None:
                        raise exc.__cause__ from None
                    continue
