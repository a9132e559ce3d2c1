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

from contracts import ids, subjects
from contracts.enums import FailureCategory, Stage
from contracts.events import PromptEvent
from contracts.ops import DeadLetter
from services.recorder import tables as t
from services.recorder.checks import batch_totals

# The stage that did not happen when a message of this kind could not be processed.
STAGE_OF = {"queued": Stage.CHAT, "responded": Stage.JUDGE, "judged": Stage.SCORE}
# A prompt's own end the recorder could not store (a score, a failure) still ends the prompt, at
# the stage it names or the score stage, so its batch finishes.
ENDING = {"scored", "failed"}


async def from_advisory(js: JetStreamContext, raw: Msg) -> DeadLetter | None:
    """Turn a MAX_DELIVERIES advisory into a dead letter holding the original message."""
    advisory = orjson.loads(raw.data)
    if not isinstance(advisory, dict):
        raise ValueError("an advisory must be a JSON object")
    seq = int(advisory["stream_seq"])  # typed as a string by some server versions
    if not 0 < seq < 2**63:
        raise ValueError(f"stream_seq {seq} out of range")
    consumer = str(advisory.get("consumer", "unknown"))
    try:
        original = await js.get_msg(subjects.STREAM_EVENTS, seq)
    except NotFoundError:
        return None  # aged out of the stream already: nothing left to keep
    return DeadLetter(
        service=consumer,
        subject=original.subject or "",
        reason=f"not processed after {advisory.get('deliveries', '?')} deliveries to {consumer}",
        payload=printable((original.data or b"")[:65_536].decode("utf-8", errors="backslashreplace")),
        stream_seq=seq,
    )


def printable(value: str) -> str:
    """`value` as PostgreSQL can store it: NUL and lone surrogates written as escapes."""
    value = value.replace("\x00", "\\x00")
    if not value.isascii():
        value = value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return value


def prompt_failure(letter: DeadLetter) -> dict[str, Any] | None:
    """The failure row for the prompt a dead-lettered prompt event was about, if it names one:
    the subject's batch must be the body's and the prompt id its index's (whether the batch has
    that prompt is checked in bulk by the caller)."""
    verb = letter.subject.rsplit(".", 1)[-1]
    if (verb not in STAGE_OF and verb not in ENDING) or ".prompt." not in letter.subject:
        return None
    try:
        evt = PromptEvent.model_validate_json(letter.payload)
        named = orjson.loads(letter.payload).get("stage") if verb == "failed" else None
    except (ValidationError, ValueError, AttributeError):
        return None  # poison we cannot attribute to a prompt
    stage = STAGE_OF.get(verb, Stage.SCORE)
    if named in {s.value for s in Stage}:
        stage = Stage(named)
    if subjects.batch_id_of(letter.subject) != evt.batch_id or evt.prompt_id != ids.prompt_id(evt.batch_id, evt.index):
        return None  # not about a prompt of the batch its subject names
    return {
        "prompt_id": evt.prompt_id,
        "stage": stage.value,
        "batch_id": evt.batch_id,
        "category": FailureCategory.DEAD_LETTER.value,
        "error": printable(letter.reason[:4000]),
        "idx": evt.index,
        "attempts": 0,
        "raw_output": None,
    }


async def record_dead_letters(conn: AsyncConnection, letters: list[DeadLetter]) -> set[str]:
    """Store the letters and the failures they imply; returns the batches touched."""
    if not letters:
        return set()
    rows = [
        {
            "service": printable(dl.service),
            "subject": printable(dl.subject),
            "stream_seq": dl.stream_seq,
            "reason": printable(dl.reason),
            "payload": printable(dl.payload),
        }
        for dl in letters
    ]
    await conn.execute(insert(t.dead_letters).on_conflict_do_nothing(), rows)
    failures = [f for f in (prompt_failure(dl) for dl in letters) if f is not None]
    # Only prompts their batch has become failures (one query): a dead letter of a forged or
    # refused event must not finish, or count in, a batch. A batch without a row is left out.
    totals = await batch_totals(conn, {f["batch_id"] for f in failures})
    failures = [f for f in failures if f.pop("idx") < (totals.get(f["batch_id"]) or 0)]
    if failures:
        await conn.execute(insert(t.failures).on_conflict_do_nothing(), failures)
    return {f["batch_id"] for f in failures}
