"""One structured line per retry of a model call (logger `evalbus.retry`): the attempt that failed
and of how many, its outcome (HTTP status, failure category), the delay before the next attempt
and the endpoint's circuit state; and one line when the retries run out or a retry succeeds."""

import logging
import re
from collections.abc import Callable

from tenacity import RetryCallState

log = logging.getLogger("evalbus.retry")

_STATUS = re.compile(r"^HTTP (\d{3})\b")


def _outcome(exc: BaseException | None) -> tuple[str, int | None]:
    """(failure category, HTTP status or None) of a failed attempt."""
    category = getattr(exc, "category", None)
    name = getattr(category, "value", None) or (type(exc).__name__ if exc else "unknown")
    found = _STATUS.match(str(exc)) if exc else None
    return str(name), int(found[1]) if found else None


def _fields(endpoint: str, batch_id: str, attempt: int, attempts: int, exc: BaseException | None) -> dict[str, object]:
    category, status = _outcome(exc)
    return {
        "endpoint": endpoint,
        "batch_id": batch_id,
        "attempt": attempt,
        "max_attempts": attempts,
        "outcome": category,
        "status": status,
    }


def before_retry(
    endpoint: str, batch_id: str, max_attempts: int, circuit: Callable[[], str]
) -> Callable[[RetryCallState], None]:
    """tenacity's `before_sleep`: the failed attempt, the delay chosen and the circuit now."""

    def logged(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        fields = _fields(endpoint, batch_id, state.attempt_number, max_attempts, exc)
        fields |= {"delay_s": round(delay, 3), "circuit": circuit()}
        log.info(
            "retry endpoint=%s batch=%s attempt=%d/%d outcome=%s status=%s delay_s=%.3f circuit=%s",
            endpoint,
            batch_id,
            state.attempt_number,
            max_attempts,
            fields["outcome"],
            fields["status"] if fields["status"] is not None else "-",
            delay,
            fields["circuit"],
            extra=fields,
        )

    return logged


def retries_ended(
    endpoint: str, batch_id: str, attempts: int, max_attempts: int, exc: BaseException | None, circuit: str
) -> None:
    """After a call that was retried: it succeeded at `attempts`, or (exc) gave up there."""
    fields = _fields(endpoint, batch_id, attempts, max_attempts, exc) | {"circuit": circuit}
    if exc is None:
        fields["outcome"] = "ok"
    log.log(
        logging.INFO if exc is None else logging.WARNING,
        "retry endpoint=%s batch=%s attempt=%d/%d outcome=%s status=%s %s circuit=%s",
        endpoint,
        batch_id,
        attempts,
        max_attempts,
        fields["outcome"],
        fields["status"] if fields["status"] is not None else "-",
        "succeeded" if exc is None else "gave_up",
        circuit,
        extra=fields,
    )
