"""The subject catalogue and stream names: the only place subjects are spelled out.

`evalbus.v1.batch.<batch_id>.>` is one batch; `evalbus.v1.batch.*.prompt.queued` is one
service's work. The version token comes early so a v2 can run beside v1.
"""

import re
from typing import NamedTuple

PREFIX = "evalbus.v1"

STREAM_EVENTS = "EVALBUS_EVENTS"
STREAM_PROGRESS = "EVALBUS_PROGRESS"
STREAM_DLQ = "EVALBUS_DLQ"
STREAM_OPS = "EVALBUS_OPS"

EVENTS_SUBJECTS = f"{PREFIX}.batch.>"
PROGRESS_SUBJECTS = f"{PREFIX}.progress.>"
DLQ_SUBJECTS = f"{PREFIX}.dlq.>"
OPS_SUBJECTS = f"{PREFIX}.breaker.>"
# JetStream's own notice that a message ran out of deliveries; the DLQ stream keeps it too.
MAX_DELIVERIES_ADVISORIES = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM_EVENTS}.>"


def batch_event(batch_id: str, entity: str, verb: str) -> str:
    return f"{PREFIX}.batch.{batch_id}.{entity}.{verb}"


def any_batch(entity: str, verb: str) -> str:
    """Filter for one kind of event across all batches."""
    return batch_event("*", entity, verb)


def batch_all(batch_id: str) -> str:
    return f"{PREFIX}.batch.{batch_id}.>"


def start_requested(batch_id: str) -> str:
    return batch_event(batch_id, "start", "requested")


def cancel_requested(batch_id: str) -> str:
    return batch_event(batch_id, "cancel", "requested")


def batch_lifecycle(batch_id: str) -> str:
    """accepted, rejected, completed, ... of one batch."""
    return batch_event(batch_id, "batch", "*")


def progress(batch_id: str) -> str:
    return f"{PREFIX}.progress.{batch_id}"


def dlq(service: str) -> str:
    return f"{PREFIX}.dlq.{service}"


def endpoint_token(base_url: str) -> str:
    """A model endpoint as one subject token: `http://127.0.0.1:8089/v1` -> `127_0_0_1_8089_v1`."""
    bare = base_url.split("://", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_-]+", "_", bare).strip("_") or "endpoint"


def breaker(base_url: str) -> str:
    return breaker_of(endpoint_token(base_url))


def breaker_of(token: str) -> str:
    """The breaker subject of an endpoint already made a token (see `endpoint_token`)."""
    return f"{PREFIX}.breaker.{token}"


def max_deliveries_advisory(durable: str) -> str:
    """JetStream's notice that a message of the events stream ran out of deliveries to `durable`."""
    return MAX_DELIVERIES_ADVISORIES.removesuffix(">") + durable


def control(service: str) -> str:
    """Where a service answers about itself (`<control>.status`)."""
    return f"{PREFIX}.ctl.{service}"


def api(endpoint: str) -> str:
    return f"{PREFIX}.api.{endpoint}"


class BatchSubject(NamedTuple):
    """The parts of `evalbus.v1.batch.<batch_id>.<entity>.<verb>`."""

    batch_id: str
    entity: str
    verb: str


def parse_batch_subject(subject: str) -> BatchSubject | None:
    """The grammar of batch subjects, read in one place: None for any other subject (or one with
    more or fewer tokens)."""
    parts = subject.split(".")
    if len(parts) == 6 and parts[0] == "evalbus" and parts[1] == "v1" and parts[2] == "batch":
        return BatchSubject(parts[3], parts[4], parts[5])
    return None


def batch_id_of(subject: str) -> str | None:
    """The batch id token of any subject under `evalbus.v1.batch.<id>.` (however many tokens
    follow), if it is one. Looser than `parse_batch_subject`, which reads only well-formed event
    subjects: kept for the callers that compare a subject's batch with a body's."""
    parts = subject.split(".")
    if len(parts) >= 4 and parts[0] == "evalbus" and parts[1] == "v1" and parts[2] == "batch":
        return parts[3]
    return None
