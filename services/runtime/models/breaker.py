"""A circuit breaker per model endpoint: aiobreaker, behind one small wrapper of ours.

The wrapper fixes what aiobreaker gets wrong for us (see shared notes): it keeps its own
monotonic clock for the pause (aiobreaker mixes local and UTC time), admits a single caller at
a time while the breaker is not closed (aiobreaker's half-open admits everyone), and counts only
failures that say the endpoint is unhealthy. While open, calls are not failed: they wait out the
pause and then go one by one; the first success closes the breaker and restores concurrency.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from aiobreaker import CircuitBreaker, CircuitBreakerError, CircuitBreakerListener, CircuitBreakerState

from services.runtime.observability import metrics

T = TypeVar("T")
StateChange = Callable[[str, str, str], None]  # endpoint, old state, new state

_NAMES = {
    CircuitBreakerState.CLOSED: "closed",
    CircuitBreakerState.OPEN: "open",
    CircuitBreakerState.HALF_OPEN: "half_open",
}


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
    ) -> None:
        self.endpoint = endpoint
        self._reset_s = reset_s
        self._counts = counts
        self._on_change = on_change
        self._open_until = 0.0
        self._one_at_a_time = asyncio.Lock()
        self._breaker = CircuitBreaker(
            fail_max=fail_max, timeout_duration=timedelta(seconds=reset_s), listeners=[_Listener(self)]
        )

    @property
    def state(self) -> str:
        return _NAMES[self._breaker.current_state]

    def _changed(self, old: str, new: str) -> None:
        if new == "open":
            self._open_until = time.monotonic() + self._reset_s
        metrics.breaker_changed(self.endpoint, old, new)
        if self._on_change is not None:
            self._on_change(self.endpoint, old, new)

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
            await asyncio.sleep(max(0.0, self._open_until - time.monotonic()))
            async with self._one_at_a_time:
                if self.state == "closed":
                    # A probe closed it while this caller queued: go at full concurrency. (Waiters
                    # that kept calling one by one here, while new callers queued behind them,
                    # held a busy service at one call at a time for good.)
                    continue
                try:
                    return await self._through(fn)
                except CircuitBreakerError as exc:
                    if exc.__cause__ is not None:
                        raise exc.__cause__ from None
                    continue
