"""What the recorder checks before it writes an event, so that no single event can fail a write
(and with it every event fetched beside it) or count where it does not belong.

- `fits_columns`: strings PostgreSQL can store (no NUL) and numbers that fit their columns
  (integer, smallint, finite floats). The contract bounds most of it; this holds whatever the
  contract lets through.
- `prompt_refusal`: a prompt-level event is taken only for a prompt its batch has: the batch was
  accepted, 0 <= index < total_prompts, and prompt_id is the deterministic id of that index.
"""

import math
from collections.abc import Callable
from datetime import UTC
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ids
from contracts.enums import BatchStatus
from contracts.events import (
    BatchAccepted,
    BatchRejected,
    Event,
    PromptEvent,
    PromptFailed,
    PromptJudged,
    PromptResponded,
    PromptScored,
    Usage,
)

INT4_MAX = 2**31 - 1
INT2_MAX = 2**15 - 1


def has_nul(data: bytes) -> bool:
    """Whether a JSON document holds a NUL character in any key or string. JSON carries NUL only
    as the escape `\\u0000`, so documents without one are answered without parsing."""
    if b"\\u0000" not in data:
        return False
    stack: list[Any] = [orjson.loads(data)]
    while stack:  # iterative: a deep document must not exhaust the stack
        value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                return True
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    return True
                stack.append(item)
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _usage_problem(u: Usage) -> str | None:
    if u.tokens_in > INT4_MAX or u.tokens_out > INT4_MAX:
        return f"usage tokens beyond {INT4_MAX}"
    if u.attempts > INT2_MAX:
        return f"usage.attempts beyond {INT2_MAX}"
    if not (math.isfinite(u.latency_ms) and math.isfinite(u.cost_usd)):
        return "usage latency_ms and cost_usd must be finite"
    return None


def _judged_problem(evt: PromptJudged) -> str | None:
    c = evt.calls
    if c.unbatched > INT2_MAX or c.batch_size > INT2_MAX or not math.isfinite(c.share):
        return f"calls out of range (unbatched and batch_size up to {INT2_MAX}, share finite)"
    return _usage_problem(evt.usage)


def _scored_problem(evt: PromptScored) -> str | None:
    score = evt.overall_score
    return None if score is None or math.isfinite(score) else "overall_score must be finite"


def _failed_problem(evt: PromptFailed) -> str | None:
    return f"attempts beyond {INT2_MAX}" if evt.attempts > INT2_MAX else None


def _when_problem(evt: Event) -> str | None:
    """A batch's timestamps are stored in UTC: one that does not convert (year 1 at +14:00) is refused."""
    try:
        if evt.occurred_at.tzinfo is not None:
            evt.occurred_at.astimezone(UTC)
    except OverflowError:
        return "occurred_at is out of range"
    return None


def _accepted_problem(evt: BatchAccepted) -> str | None:
    if evt.total_prompts > INT4_MAX:
        return f"total_prompts beyond {INT4_MAX}"
    return _when_problem(evt)


# By exact type: on the hot path, a dict lookup is cheaper than a chain of isinstance checks.
_PROBLEMS: dict[type, Callable[[Any], str | None]] = {
    BatchAccepted: _accepted_problem,
    BatchRejected: _when_problem,
    PromptResponded: lambda evt: _usage_problem(evt.usage),
    PromptJudged: _judged_problem,
    PromptScored: _scored_problem,
    PromptFailed: _failed_problem,
}


def fits_columns(evt: Event) -> str | None:
    """Why `evt` could not be stored as rows (None when it can). Cheap: fields, no walk."""
    if isinstance(evt, PromptEvent) and evt.index > INT4_MAX:
        return f"index beyond {INT4_MAX}"
    problem = _PROBLEMS.get(type(evt))
    return None if problem is None else problem(evt)


def wrong_prompt_id(evt: PromptEvent) -> str | None:
    expected = ids.prompt_id(evt.batch_id, evt.index)
    if evt.prompt_id != expected:
        return f"prompt_id {evt.prompt_id[:100]!r} is not prompt {evt.index} of batch {evt.batch_id!r} ({expected!r})"
    return None


_TOTALS = text("SELECT batch_id, status, total_prompts FROM batches WHERE batch_id = ANY(:ids)")


async def batch_totals(conn: AsyncConnection, batch_ids: set[str]) -> dict[str, int | None]:
    """Prompts each recorded batch has; None for a rejected batch (it has none)."""
    if not batch_ids:
        return {}
    rows = await conn.execute(_TOTALS, {"ids": sorted(batch_ids)})
    return {r.batch_id: None if r.status == BatchStatus.REJECTED.value else r.total_prompts for r in rows}


def prompt_refusal(evt: PromptEvent, total: int | None, known: bool) -> str | None:
    """Why the recorder does not take `evt` for its batch of `total` prompts (`known`: the batch
    has a row), or None. A batch not recorded yet is answered by the caller (retry, not refusal)."""
    if known and total is None:
        return f"batch {evt.batch_id!r} was rejected: it has no prompts"
    if total is not None and evt.index >= total:
        return f"batch {evt.batch_id!r} has {total} prompts: no prompt {evt.index}"
    return None


def database_down(exc: BaseException) -> bool:
    """A fault of the database or the connection, not of the rows written: retry all, do not split."""
    if isinstance(exc, OSError | TimeoutError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return False
