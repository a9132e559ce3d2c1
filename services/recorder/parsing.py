"""What the recorder makes of the messages on its three streams: pure functions, no I/O.

Each parser returns what its handler works on, None for a message passed by (acked unread), and
raises (ValueError, ValidationError, KeyError, TypeError) for a message it cannot use: a dead
letter on the events stream, only logged and acked on the dead-letter and breaker streams.
"""

from dataclasses import dataclass

import orjson

from contracts.base import Event
from contracts.events import EVENT_TYPES, BatchCompleted, CallBilled, PromptEvent
from contracts.inputs import CancelBatchRequested, StartBatchRequested
from contracts.ops import BreakerStateChanged, DeadLetter
from contracts.subjects import parse_batch_subject
from services.recorder import checks
from services.runtime.messaging.handling import Incoming, check_subject

ADVISORY_PREFIX = "$JS.EVENT.ADVISORY."
BIGINT_MAX = 2**63 - 1
# Commands are the generator's to validate; the recorder does not store them. A completion is
# the recorder's own output, read back on its consumer: it stores nothing from it (a forged one
# on the subject changes no row), so it is passed by unread.
PASSED_BY = {
    (StartBatchRequested.entity, StartBatchRequested.verb),
    (CancelBatchRequested.entity, CancelBatchRequested.verb),
    (BatchCompleted.entity, BatchCompleted.verb),
}


@dataclass(frozen=True)
class Advisory:
    """JetStream's notice that the message at `stream_seq` of the events stream ran out of
    deliveries to `consumer`: a dead letter once that message has been read from the stream."""

    stream_seq: int
    consumer: str
    deliveries: str


@dataclass(frozen=True)
class BreakerRow:
    """A breaker event with the stream sequence that keys its row."""

    stream_seq: int | None
    event: BreakerStateChanged


def parse_event(msg: Incoming) -> Event | None:
    """The event of a message on the events stream, None for those the recorder passes by.
    ValueError (a dead letter) for anything it could not store or that is not what its subject
    says: the subject's batch and type must be the body's, a prompt's id its index's (a bill's
    prompt ids those of its batch)."""
    parsed = parse_batch_subject(msg.subject)
    key = (parsed.entity, parsed.verb) if parsed is not None else ("", "")
    if key in PASSED_BY:
        return None
    cls = EVENT_TYPES.get(key)
    if cls is None:
        raise ValueError(f"no event type for subject {msg.subject[:300]!r}")
    evt = cls.model_validate_json(msg.data)  # refuses what could not be stored (NUL, out-of-range numbers)
    check_subject(msg.subject, evt)
    if isinstance(evt, PromptEvent) and (problem := checks.wrong_prompt_id(evt)) is not None:
        raise ValueError(problem)
    if isinstance(evt, CallBilled) and (problem := checks.wrong_call_prompts(evt)) is not None:
        raise ValueError(problem)
    return evt


def parse_advisory(data: bytes) -> Advisory:
    advisory = orjson.loads(data)
    if not isinstance(advisory, dict):
        raise ValueError("an advisory must be a JSON object")
    seq = int(advisory["stream_seq"])  # typed as a string by some server versions
    if not 0 < seq < 2**63:
        raise ValueError(f"stream_seq {seq} out of range")
    return Advisory(seq, str(advisory.get("consumer", "unknown")), str(advisory.get("deliveries", "?")))


def parse_dead_letter(msg: Incoming) -> DeadLetter | Advisory:
    """A message on the dead-letter stream: a service's dead letter, or JetStream's advisory of a
    message that ran out of deliveries."""
    if msg.subject.startswith(ADVISORY_PREFIX):
        return parse_advisory(msg.data)
    letter = DeadLetter.model_validate_json(msg.data)
    if letter.stream_seq is not None and not 0 <= letter.stream_seq <= BIGINT_MAX:
        raise ValueError(f"stream_seq {letter.stream_seq} out of range")
    return letter


def parse_breaker_event(msg: Incoming) -> BreakerRow:
    return BreakerRow(msg.stream_seq, BreakerStateChanged.model_validate_json(msg.data))
