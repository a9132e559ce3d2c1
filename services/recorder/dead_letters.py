"""Dead letters: kept as rows, and a prompt whose event ran out of deliveries becomes a failure,
so its batch still finishes (terminal exactly once: succeeded, failed or dead-lettered)."""

from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import subjects
from contracts.enums import FailureCategory, Stage
from contracts.events import DeadLetter, PromptEvent
from services.recorder import tables as t

# The stage that did not happen when a message of this kind could not be processed.
STAGE_OF = {"queued": Stage.CHAT, "responded": Stage.JUDGE, "judged": Stage.SCORE}


async def from_advisory(js: JetStreamContext, raw: Msg) -> DeadLetter | None:
    """Turn a MAX_DELIVERIES advisory into a dead letter holding the original message."""
    advisory: dict[str, Any] = orjson.loads(raw.data)
    seq = int(advisory["stream_seq"])  # typed as a string by some server versions
    consumer = str(advisory.get("consumer", "unknown"))
    try:
        original = await js.get_msg(subjects.STREAM_EVENTS, seq)
    except NotFoundError:
        return None  # aged out of the stream already: nothing left to keep
    return DeadLetter(
        service=consumer,
        subject=original.subject or "",
        reason=f"not processed after {advisory.get('deliveries', '?')} deliveries to {consumer}",
        payload=(original.data or b"")[:65_536].decode("utf-8", errors="replace"),
        stream_seq=seq,
    )


def prompt_failure(letter: DeadLetter) -> dict[str, Any] | None:
    """The failure row for the prompt a dead-lettered prompt event was about, if it names one."""
    verb = letter.subject.rsplit(".", 1)[-1]
    if verb not in STAGE_OF or ".prompt." not in letter.subject:
        return None
    try:
        evt = PromptEvent.model_validate_json(letter.payload)
    except (ValidationError, ValueError):
        return None  # poison we cannot attribute to a prompt
    return {
        "prompt_id": evt.prompt_id,
        "stage": STAGE_OF[verb].value,
        "batch_id": evt.batch_id,
        "category": FailureCategory.DEAD_LETTER.value,
        "error": letter.reason[:4000],
        "attempts": 0,
        "raw_output": None,
    }


async def record_dead_letters(conn: AsyncConnection, letters: list[DeadLetter]) -> set[str]:
    """Store the letters and the failures they imply; returns the batches touched."""
    if not letters:
        return set()
    rows = [
        {
            "service": dl.service,
            "subject": dl.subject,
            "stream_seq": dl.stream_seq,
            "reason": dl.reason,
            "payload": dl.payload,
        }
        for dl in letters
    ]
    await conn.execute(insert(t.dead_letters).on_conflict_do_nothing(), rows)
    failures = [f for f in (prompt_failure(dl) for dl in letters) if f is not None]
    if failures:
        await conn.execute(insert(t.failures).on_conflict_do_nothing(), failures)
    return {f["batch_id"] for f in failures}
