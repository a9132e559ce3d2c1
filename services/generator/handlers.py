"""The generator's handlers: a start claims its batch id, then publishes accepted and every prompt,
or a rejection; a cancel of a started batch is recorded where runners and judges watch for it."""

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from pathlib import Path

import nats.errors

from contracts import ids, subjects
from contracts.events import BatchRejected
from contracts.inputs import CancelBatchRequested, StartBatchRequested
from contracts.topology import GENERATOR_START
from contracts.validation import describe_error
from services.generator.cancels import CancelRecords
from services.generator.claims import StartClaim, StartClaims, StartedBatches, StartState
from services.generator.logic import BatchPlan, InvalidStart, plan_batch, read_start
from services.generator.suite_loader import SuiteError, SuiteFile
from services.generator.suite_objects import SuiteStore
from services.runtime.messaging.acks import delay_after
from services.runtime.messaging.handling import Incoming, Refused, RetryLater
from services.runtime.messaging.publishing import Publisher

log = logging.getLogger("evalbus.generator")
PUBLISH_CHUNK = 1000
# Small first chunks: the first prompts reach the model while the rest are still being built.
FIRST_CHUNKS = (16, 128)
# Faults that go away by themselves (the broker unreachable, a publish not acknowledged): the
# message is retried. Anything else would fail the same way again: it is answered and acked.
TRANSIENT = (nats.errors.Error, TimeoutError, ConnectionError)
# A cancel and its start arrive on different durables, so a cancel can be handled just before its
# start has claimed the batch: it waits this long (nak delays, in deliveries) before it is refused.
CANCEL_WAITS_FOR_START_S = (1.0, 2.0, 4.0, 8.0, 15.0)
UNEXPECTED_START = "the generator failed on this start in an unexpected way; it is not retried"


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


@dataclass(frozen=True)
class SuiteAccess:
    """Where suites may come from, beside inline cases and the bundled ones."""

    dirs: Sequence[Path] = field(default_factory=tuple)
    max_upload_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class StartDelivery:
    """A start as delivered: what it says (or why it is unusable), its bytes (a claim records
    their digest) and its delivery count (a repeat waits for the first start a few times)."""

    start: StartBatchRequested | InvalidStart
    data: bytes
    delivered: int = 1


def read_start_delivery(msg: Incoming) -> StartDelivery:
    """The start consumer's parser: never raises, an unusable start is answered by the handler."""
    return StartDelivery(read_start(msg.subject, msg.data), msg.data, msg.delivered)


@dataclass(frozen=True)
class CancelDelivery:
    cancel: CancelBatchRequested
    delivered: int = 1


def read_cancel(msg: Incoming) -> CancelDelivery:
    """The cancel consumer's parser: a body that does not validate is dead-lettered; one naming
    another batch than its subject would cancel that batch, so it is dead-lettered too."""
    try:
        cancel = CancelBatchRequested.model_validate_json(msg.data)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise ValueError(f"invalid cancel event: {describe_error(exc)}") from None
    parsed = subjects.parse_batch_subject(msg.subject)
    subject_batch = parsed.batch_id if parsed is not None else None
    if cancel.batch_id != subject_batch:
        raise ValueError(f"batch_id {cancel.batch_id!r} in the body does not match the subject's {subject_batch!r}")
    return CancelDelivery(cancel, msg.delivered)


async def on_start_requested(
    delivery: StartDelivery,
    publisher: Publisher,
    claims: StartClaims,
    suites: SuiteStore,
    access: SuiteAccess,
) -> None:
    """Claim the batch id, then publish accepted + every prompt, or a rejection; a repeated start
    of an id gets a rejection that leaves the first start's batch as it is."""
    start = delivery.start
    if isinstance(start, InvalidStart) and start.rejection() is None:  # nobody can be told: the dead letter keeps it
        raise Refused(start.reason)
    batch_id = start.batch_id
    assert batch_id is not None
    event_id = start.event_id if isinstance(start, StartBatchRequested) else ids.event_id("start.requested", batch_id)
    mine = StartClaim.new(event_id, delivery.data)
    held, created = await claims.claim(batch_id, mine)
    upload = start.suite.object if isinstance(start, StartBatchRequested) else None
    if not created and not held.same_start(mine):
        await _repeat(publisher, delivery.delivered, batch_id, held, mine)
        if held.settled and upload:
            await suites.delete(upload)
        return
    refusal: str | None = None
    if held.settled:  # a redelivery of the start that was already answered
        log.info("batch %s was already %s by this start; nothing to do", batch_id, held.state.value)
    elif isinstance(start, InvalidStart):
        rejection = start.rejection()
        assert rejection is not None
        await publisher.publish([rejection])
        await claims.settle(batch_id, mine, StartState.REJECTED)
        raise Refused(start.reason)
    else:
        refusal = await _start(publisher, claims, suites, start, mine, access)
    if upload:
        await suites.delete(upload)
    if refusal is not None:
        raise Refused(refusal)


async def _repeat(publisher: Publisher, delivered: int, batch_id: str, held: StartClaim, mine: StartClaim) -> None:
    """Answer another start of an id already used, without touching the batch that used it."""
    if not held.settled and delivered < GENERATOR_START.max_deliver:
        # The first start is still being planned: answer once it has been accepted or rejected,
        # so this answer can never reach a reader before the batch's own.
        raise RetryLater(delay_after(delivered), f"batch {batch_id} is being started by another start event")
    when = f" at {held.claimed_at:%Y-%m-%d %H:%M:%S} UTC" if held.event_id else ""
    reason = (
        f"batch {batch_id} was already started{when} ({held.state.value}); batch ids are single-use, "
        "so this start was ignored: start the batch again under a new id"
    )
    rejection = BatchRejected(
        batch_id=batch_id,
        reason=reason,
        errors=[reason],
        repeated_start=True,
        event_id=ids.event_id("batch.rejected.repeat", batch_id, mine.digest),
    )
    await publisher.publish([rejection])
    log.info("refused a repeated start of batch %s (first started %s)", batch_id, held.claimed_at)


async def _start(
    publisher: Publisher,
    claims: StartClaims,
    suites: SuiteStore,
    start: StartBatchRequested,
    mine: StartClaim,
    access: SuiteAccess,
) -> str | None:
    """Plan and publish the batch, or reject it; the reason to dead-letter the start, if any."""
    accepted_published = False
    try:
        async with _suite_file(suites, start, access) as file:
            # Validation reads the whole suite once; keep the event loop free for acks and keep-alives.
            outcome = await asyncio.to_thread(plan_batch, start, access.dirs, file)
            if isinstance(outcome, BatchPlan):
                accepted_published = True  # from here on, a failure must not reject the batch
                await publish_plan(publisher, outcome)
    except SuiteError as exc:
        outcome = BatchRejected(batch_id=start.batch_id, reason=f"unusable suite: {exc}", errors=[str(exc)])
    except TRANSIENT:
        raise
    except Exception as exc:
        log.exception("start of batch %s failed", start.batch_id)
        if accepted_published:
            await claims.settle(start.batch_id, mine, StartState.ACCEPTED)
            return f"batch {start.batch_id} was accepted but publishing its prompts failed ({type(exc).__name__})"
        outcome = BatchRejected(batch_id=start.batch_id, reason=UNEXPECTED_START, errors=[UNEXPECTED_START])
    if isinstance(outcome, BatchRejected):
        await publisher.publish([outcome])
        await claims.settle(start.batch_id, mine, StartState.REJECTED)
        log.info("rejected batch %s: %s", start.batch_id, outcome.reason)
        return None
    await claims.settle(start.batch_id, mine, StartState.ACCEPTED)
    log.info("accepted batch %s: %d prompts", start.batch_id, outcome.accepted.total_prompts)
    return None


async def publish_plan(publisher: Publisher, plan: BatchPlan) -> None:
    await publisher.publish([plan.accepted])
    prompts = plan.prompts()
    for size in chain(FIRST_CHUNKS, repeat(PUBLISH_CHUNK)):
        chunk = list(islice(prompts, size))
        if not chunk:
            break
        await publisher.publish(chunk)


@asynccontextmanager
async def _suite_file(
    suites: SuiteStore, start: StartBatchRequested, access: SuiteAccess
) -> AsyncIterator[SuiteFile | None]:
    """An uploaded suite downloaded to a temporary file for as long as it is read; else None."""
    name = start.suite.object
    if name is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="evalbus-suite-") as tmp:
        label = start.suite.name or "uploaded suite"
        yield await suites.download(start.batch_id, name, label, Path(tmp), access.max_upload_bytes)


async def on_cancel_requested(delivery: CancelDelivery, starts: StartedBatches, cancels: CancelRecords) -> None:
    """Record the cancel of a started batch where every runner and judge replica watches for it."""
    cancel = delivery.cancel
    if not await starts.was_started(cancel.batch_id):
        # Not recorded: a cancel kept for an id never started would cancel a later start of it.
        if delivery.delivered <= len(CANCEL_WAITS_FOR_START_S):
            raise RetryLater(
                CANCEL_WAITS_FOR_START_S[delivery.delivered - 1], f"batch {cancel.batch_id} not started yet"
            )
        raise Refused(f"no batch {cancel.batch_id} was started")
    await cancels.record(cancel.batch_id, cancel.reason)
    log.info("batch %s cancelled: %s", cancel.batch_id, cancel.reason)
