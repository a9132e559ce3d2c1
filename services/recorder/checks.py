"""What the recorder checks before it writes an event, so that no single event can fail a write
(and with it every event fetched beside it) or count where it does not belong.

- The contract already refuses what PostgreSQL could not store (NUL, numbers beyond their
  columns, non-finite floats: contracts/text.py and the bounds in contracts/events.py).
- `prompt_refusal`: a prompt-level event is taken only for a prompt its batch has: the batch was
  accepted, 0 <= index < total_prompts, and prompt_id is the deterministic id of that index. A
  bill (`call.billed`) names its prompts by id only: each must be such an id, of a prompt its batch has.
"""

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ids
from contracts.bounds import INT_MAX
from contracts.enums import BatchStatus
from contracts.events import (
    CallBilled,
    PromptEvent,
)

# Events about prompts of their batch, screened against the prompts it has.
PROMPT_LEVEL = (PromptEvent, CallBilled)
PromptLevel = PromptEvent | CallBilled


def wrong_prompt_id(evt: PromptEvent) -> str | None:
    expected = ids.prompt_id(evt.batch_id, evt.index)
    if evt.prompt_id != expected:
        return f"prompt_id {evt.prompt_id[:100]!r} is not prompt {evt.index} of batch {evt.batch_id!r} ({expected!r})"
    return None


def prompt_index(batch_id: str, prompt_id: str) -> int | None:
    """The index whose deterministic id `prompt_id` is in batch `batch_id`, or None."""
    head, _, tail = prompt_id.rpartition("-")
    if head != batch_id or not (tail.isascii() and tail.isdigit()):
        return None
    index = int(tail)
    return index if index <= INT_MAX and ids.prompt_id(batch_id, index) == prompt_id else None


def wrong_call_prompts(evt: CallBilled) -> str | None:
    for prompt_id in evt.prompt_ids:
        if prompt_index(evt.batch_id, prompt_id) is None:
            return f"prompt_id {prompt_id[:100]!r} is not the id of a prompt of batch {evt.batch_id!r}"
    return None


def highest_index(evt: PromptLevel) -> int:
    """The highest prompt index an event is about (a bill's ids are checked on parsing)."""
    if isinstance(evt, PromptEvent):
        return evt.index
    return max(prompt_index(evt.batch_id, p) or 0 for p in evt.prompt_ids)


_TOTALS = text("SELECT batch_id, status, total_prompts FROM batches WHERE batch_id = ANY(:ids)")


async def batch_totals(conn: AsyncConnection, batch_ids: set[str]) -> dict[str, int | None]:
    """Prompts each recorded batch has; None for a rejected batch (it has none)."""
    if not batch_ids:
        return {}
    rows = await conn.execute(_TOTALS, {"ids": sorted(batch_ids)})
    return {r.batch_id: None if r.status == BatchStatus.REJECTED.value else r.total_prompts for r in rows}


def prompt_refusal(evt: PromptLevel, total: int | None, known: bool) -> str | None:
    """Why the recorder does not take `evt` for its batch of `total` prompts (`known`: the batch
    has a row), or None. A batch not recorded yet is answered by the caller (retry, not refusal)."""
    if known and total is None:
        return f"batch {evt.batch_id!r} was rejected: it has no prompts"
    index = highest_index(evt)
    if total is not None and index >= total:
        return f"batch {evt.batch_id!r} has {total} prompts: no prompt {index}"
    return None


def database_down(exc: BaseException) -> bool:
    """A fault of the database or the connection, not of the rows written: retry all, do not split."""
    if isinstance(exc, OSError | TimeoutError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return False
