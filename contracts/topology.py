"""Streams and durable consumers as data. `infra.nats_topology` applies them; services bind.

Consumer settings only take effect when a consumer is created (nats-py binds to an existing
durable without re-applying config), so they live here, in one place.
"""

import re
from dataclasses import dataclass, field

from contracts import subjects


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float
    # Covers every re-publish of the normal paths: a redelivery after a crash (ack wait 15-60 s)
    # and a nak after a lost PubAck (30 s publish timeout, then a 2-4 s delay). Past it, readers'
    # natural keys still count nothing twice. nats-server keeps every id in the window, so its
    # memory follows rate x window (docs/decisions.md).
    duplicate_window_s: float = 120.0
    max_msgs_per_subject: int = -1


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer. Handlers that run long send in-progress signals every third of
    the ack wait the server reports, so a short ack wait only shortens redelivery after a crash."""

    durable: str
    stream: str
    filter_subject: str
    ack_wait_s: float
    max_deliver: int
    max_ack_pending: int
    backoff_s: tuple[float, ...] = field(default=())


DAY = 86_400.0

# Start commands already acted on, by batch id: a start re-sent hours later (past the stream's
# dedup window) must not run the batch again.
KV_STARTS = "evalbus_starts"
# Batches a user cancelled: model-calling services skip their pending prompts.
KV_CANCELS = "evalbus_cancels"
# Shared per-endpoint rate budgets (token buckets), one key per model endpoint.
KV_RATES = "evalbus_rates"
# Model endpoints' circuit breakers as the replicas of a service share them, one key per service
# and endpoint (services/runtime/models/shared_breaker.py).
KV_BREAKERS = "evalbus_breakers"
# Model calls in flight, capped across every replica of every service: one key per slot of an
# endpoint's cap and of a batch's cap on it, held by a lease its holder renews while the call
# runs. The bucket's max age is the lease TTL: a crashed holder's slots come back within it
# (services/runtime/models/leases.py). Shorter than the model-calling consumers' ack wait (15 s),
# so a crashed replica's slots are free again before its prompts are redelivered.
KV_LEASES = "evalbus_leases"
LEASE_TTL_S = 5.0
# Core NATS notices (not stored) about the slots of `<key>`: `<prefix>.freed.<key>` (payload the
# slot number) when one is given back, so waiters of other processes try it at once instead of
# polling; `<prefix>.wanted.<key>` (payload the waiter) when a process waits, so the others give
# back the leases they keep idle and take turns with those in use.
LEASE_NOTICE_PREFIX = "evalbus.v1.leases"
# Suites too large to travel inline in a start event: the CLI uploads them, the generator reads
# them once and deletes them when the start is settled. The max age (the events stream's) only
# cleans up what was never settled: an upload whose start never came, a delete that failed.
OBJ_SUITES = "evalbus_suites"
OBJ_SUITES_MAX_AGE_S = 7 * 86_400.0
# An uploaded suite's object name: `<batch id>.<sha256 of its bytes>.<jsonl|yaml|yml>`. The
# generator reads only the object named for the batch it starts and checks the digest, so a start
# cannot use another batch's upload, and an object replaced after upload is refused.
SUITE_OBJECT_PATTERN = r"^([A-Za-z0-9_-]{1,64})\.([0-9a-f]{64})\.(jsonl|yaml|yml)$"
_SUITE_OBJECT = re.compile(SUITE_OBJECT_PATTERN)


def suite_object_name(batch_id: str, sha256_hex: str, suffix: str) -> str:
    """The object a suite for `batch_id` is uploaded as; `suffix` is `.yaml`/`.yml`, else JSONL."""
    ext = suffix.lower().lstrip(".")
    return f"{batch_id}.{sha256_hex}.{ext if ext in ('yaml', 'yml') else 'jsonl'}"


def parse_suite_object_name(name: str) -> tuple[str, str, str] | None:
    """(batch id, sha256 hex, extension) of a suite object name, or None if it is not one."""
    found = _SUITE_OBJECT.fullmatch(name)
    return (found[1], found[2], found[3]) if found else None


STREAMS: tuple[StreamSpec, ...] = (
    StreamSpec(subjects.STREAM_EVENTS, (subjects.EVENTS_SUBJECTS,), max_age_s=7 * DAY),
    # Late joiners read the last snapshot per batch; a few are kept for `nats stream view`.
    StreamSpec(subjects.STREAM_PROGRESS, (subjects.PROGRESS_SUBJECTS,), max_age_s=DAY, max_msgs_per_subject=5),
    StreamSpec(subjects.STREAM_DLQ, (subjects.DLQ_SUBJECTS, subjects.MAX_DELIVERIES_ADVISORIES), max_age_s=30 * DAY),
    StreamSpec(subjects.STREAM_OPS, (subjects.OPS_SUBJECTS,), max_age_s=7 * DAY),
)

GENERATOR_START = ConsumerSpec(
    durable="generator-start-requested",
    stream=subjects.STREAM_EVENTS,
    filter_subject=subjects.any_batch("start", "requested"),
    ack_wait_s=60,
    max_deliver=10,
    max_ack_pending=16,
)
GENERATOR_CANCEL = ConsumerSpec(
    durable="generator-cancel-requested",
    stream=subjects.STREAM_EVENTS,
    filter_subject=subjects.any_batch("cancel", "requested"),
    ack_wait_s=30,
    max_deliver=10,
    max_ack_pending=16,
)
CHAT_RUNNER_QUEUED = ConsumerSpec(
    durable="chat-runner-prompt-queued",
    stream=subjects.STREAM_EVENTS,
    filter_subject=subjects.any_batch("prompt", "queued"),
    ack_wait_s=15,
    max_deliver=10,
    max_ack_pending=2048,
)
JUDGE_RESPONDED = ConsumerSpec(
    durable="judge-prompt-responded",
    stream=subjects.STREAM_EVENTS,
    filter_subject=subjects.any_batch("prompt", "responded"),
    ack_wait_s=15,
    max_deliver=10,
    max_ack_pending=2048,
)
SCORER_JUDGED = ConsumerSpec(
    durable="scorer-prompt-judged",
    stream=subjects.STREAM_EVENTS,
    filter_subject=subjects.any_batch("prompt", "judged"),
    ack_wait_s=15,
    max_deliver=10,
    max_ack_pending=4096,
)
RECORDER_EVENTS = ConsumerSpec(
    durable="recorder-events",
    stream=subjects.STREAM_EVENTS,
    filter_subject=subjects.EVENTS_SUBJECTS,
    ack_wait_s=15,
    max_deliver=20,
    max_ack_pending=8192,
)

RECORDER_DEAD_LETTERS = ConsumerSpec(
    durable="recorder-dead-letters",
    stream=subjects.STREAM_DLQ,
    filter_subject="",  # the whole stream: our dead letters and JetStream's advisories
    ack_wait_s=15,
    max_deliver=20,
    max_ack_pending=1024,
)

RECORDER_BREAKERS = ConsumerSpec(
    durable="recorder-breaker-events",
    stream=subjects.STREAM_OPS,
    filter_subject=subjects.OPS_SUBJECTS,
    ack_wait_s=15,
    max_deliver=20,
    max_ack_pending=1024,
)

CONSUMERS: tuple[ConsumerSpec, ...] = (
    GENERATOR_START,
    GENERATOR_CANCEL,
    CHAT_RUNNER_QUEUED,
    JUDGE_RESPONDED,
    SCORER_JUDGED,
    RECORDER_EVENTS,
    RECORDER_DEAD_LETTERS,
    RECORDER_BREAKERS,
)
