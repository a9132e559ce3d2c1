"""What a dead letter means: kept as a row, and a prompt whose event ran out of deliveries becomes
a failure, so its batch still finishes (terminal exactly once: succeeded, failed or dead-lettered).
The rows are written by repository.record_dead_letters."""

from typing import Any

import orjson
from pydantic import ValidationError

from contracts import ids, subjects
from contracts.enums import FailureCategory, Stage
from contracts.events import PromptEvent
from contracts.ops import DeadLetter
from services.recorder.parsing import Advisory
from services.runtime.messaging.handling import Incoming

# The stage that did not happen when a message of this kind could not be processed.
STAGE_OF = {"queued": Stage.CHAT, "responded": Stage.JUDGE, "judged": Stage.SCORE}
# A prompt's own end the recorder could not store (a score, a failure) still ends the prompt, at
# the stage it names or the score stage, so its batch finishes.
ENDING = {"scored", "failed"}


def from_advisory(advisory: Advisory, original: Incoming) -> DeadLetter:
    """The dead letter a MAX_DELIVERIES advisory stands for, holding the original message."""
    return DeadLetter(
        service=advisory.consumer,
        subject=original.subject,
        reason=f"not processed after {advisory.deliveries} deliveries to {advisory.consumer}",
        payload=printable(original.data[:65_536].decode("utf-8", errors="backslashreplace")),
        stream_seq=advisory.stream_seq,
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
