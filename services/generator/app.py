"""Generator service: `faststream run --factory services.generator.app:create_app`."""

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import chain, islice, repeat
from pathlib import Path

import nats.errors
from faststream import FastStream
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts import ids, subjects
from contracts.events import BatchRejected
from contracts.inputs import CancelBatchRequested, StartBatchRequested
from contracts.topology import GENERATOR_CANCEL, GENERATOR_START, KV_CANCELS, KV_STARTS
from contracts.validation import describe_error
from services.generator import suite_objects
from services.generator.claims import StartClaim, StartState, claim, settle_claim
from services.generator.logic import Invalid, Plan, plan_batch, read_start
from services.generator.suite_loader import SuiteError, SuiteFile
from services.runtime.messaging.acks import dead_letter, retry_delay, settle
from services.runtime.messaging.connection import jetstream
from services.runtime.messaging.keepalive import KeepAlive
from services.runtime.messaging.publishing import publish_events
from services.runtime.messaging.service import consume, new_service
from services.runtime.settings import get_settings

log = logging.getLogger("evalbus.generator")
SERVICE = "generator"
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


class RetryLater(Exception):
    """Not now: negatively acknowledge the message so it comes back after `delay_s`."""

    def __init__(self, delay_s: float, why: str) -> None:
        super().__init__(why)
        self.delay_s = delay_s


@dataclass(frozen=True)
class SuiteAccess:
    """Where suites may come from, beside inline cases and the bundled ones."""

    dirs: Sequence[Path] = field(default_factory=tuple)
    max_upload_bytes: int = 256 * 1024 * 1024


def deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:  # not a JetStream message
        return 1


async def _publish_plan(js: JetStreamContext, plan: Plan) -> None:
    await publish_events(js, [plan.accepted])
    prompts = plan.prompts()
    for size in chain(FIRST_CHUNKS, repeat(PUBLISH_CHUNK)):
        chunk = list(islice(prompts, size))
        if not chunk:
            break
        await publish_events(js, chunk)


@asynccontextmanager
async def _suite_file(
    js: JetStreamContext, start: StartBatchRequested, access: SuiteAccess
) -> AsyncIterator[SuiteFile | None]:
    """An uploaded suite downloaded to a temporary file for as long as it is read; else None."""
    name = start.suite.object
    if name is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="evalbus-suite-") as tmp:
        label = start.suite.name or "uploaded suite"
        yield await suite_objects.download(js, start.batch_id, name, label, Path(tmp), access.max_upload_bytes)


async def _repeat(js: JetStreamContext, raw: Msg, batch_id: str, held: StartClaim, mine: StartClaim) -> None:
    """Answer another start of an id already used, without touching the batch that used it."""
    if not held.settled and deliveries(raw) < GENERATOR_START.max_deliver:
        # The first start is still being planned: answer once it has been accepted or rejected,
        # so this answer can never reach a reader before the batch's own.
        raise RetryLater(retry_delay(raw), f"batch {batch_id} is being started by another start event")
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
    await publish_events(js, [rejection])
    log.info("refused a repeated start of batch %s (first started %s)", batch_id, held.claimed_at)


async def handle_start(js: JetStreamContext, raw: Msg, access: SuiteAccess | None = None) -> None:
    """Claim the batch id, then publish accepted + every prompt, or a rejection; a repeated start
    of an id gets a rejection that leaves the first start's batch as it is."""
    access = access or SuiteAccess()
    start = read_start(raw.subject, raw.data)
    if isinstance(start, Invalid) and start.rejection() is None:  # nobody can be told: the dead letter keeps it
        await dead_letter(js, SERVICE, raw, start.reason)
        return
    batch_id = start.batch_id
    assert batch_id is not None
    event_id = start.event_id if isinstance(start, StartBatchRequested) else ids.event_id("start.requested", batch_id)
    mine = StartClaim.new(event_id, raw.data)
    kv = await js.key_value(KV_STARTS)
    held, created = await claim(kv, batch_id, mine)
    if not created and not held.same_start(mine):
        await _repeat(js, raw, batch_id, held, mine)
        if held.settled and isinstance(start, StartBatchRequested) and start.suite.object:
            await suite_objects.delete(js, start.suite.object)
        return
    if held.settled:  # a redelivery of the start that was already answered
        log.info("batch %s was already %s by this start; nothing to do", batch_id, held.state.value)
    elif isinstance(start, Invalid):
        rejection = start.rejection()
        assert rejection is not None
        await publish_events(js, [rejection])
        await settle_claim(kv, batch_id, mine, StartState.REJECTED)
        await dead_letter(js, SERVICE, raw, start.reason)
        return
    else:
        await _start(js, raw, kv, start, mine, access)
    if isinstance(start, StartBatchRequested) and start.suite.object:
        await suite_objects.delete(js, start.suite.object)


async def _start(
    js: JetStreamContext, raw: Msg, kv: KeyValue, start: StartBatchRequested, mine: StartClaim, access: SuiteAccess
) -> None:
    accepted_published = False
    try:
        async with _suite_file(js, start, access) as file:
            # Validation reads the whole suite once; keep the event loop free for acks and keep-alives.
            outcome = await asyncio.to_thread(plan_batch, start, access.dirs, file)
            if isinstance(outcome, Plan):
                accepted_published = True  # from here on, a failure must not reject the batch
                await _publish_plan(js, outcome)
    except SuiteError as exc:
        outcome = BatchRejected(batch_id=start.batch_id, reason=f"unusable suite: {exc}", errors=[str(exc)])
    except TRANSIENT:
        raise
    except Exception as exc:
        log.exception("start of batch %s failed", start.batch_id)
        if accepted_published:
            await settle_claim(kv, start.batch_id, mine, StartState.ACCEPTED)
            why = f"batch {start.batch_id} was accepted but publishing its prompts failed ({type(exc).__name__})"
            await dead_letter(js, SERVICE, raw, why)
            return
        outcome = BatchRejected(batch_id=start.batch_id, reason=UNEXPECTED_START, errors=[UNEXPECTED_START])
    if isinstance(outcome, BatchRejected):
        await publish_events(js, [outcome])
        await settle_claim(kv, start.batch_id, mine, StartState.REJECTED)
        log.info("rejected batch %s: %s", start.batch_id, outcome.reason)
        return
    await settle_claim(kv, start.batch_id, mine, StartState.ACCEPTED)
    log.info("accepted batch %s: %d prompts", start.batch_id, outcome.accepted.total_prompts)


async def handle_cancel(js: JetStreamContext, raw: Msg) -> None:
    """Record the cancel of a started batch where every runner and judge replica watches for it."""
    try:
        cancel = CancelBatchRequested.model_validate_json(raw.data)
    except (ValidationError, ValueError) as exc:
        await dead_letter(js, SERVICE, raw, f"invalid cancel event: {describe_error(exc)}")
        return
    subject_batch = subjects.batch_id_of(raw.subject)
    if cancel.batch_id != subject_batch:
        why = f"batch_id {cancel.batch_id!r} in the body does not match the subject's {subject_batch!r}"
        await dead_letter(js, SERVICE, raw, why)
        return
    try:
        await (await js.key_value(KV_STARTS)).get(cancel.batch_id)
    except KeyNotFoundError:
        # Not recorded: a cancel kept for an id never started would cancel a later start of it.
        attempt = deliveries(raw)
        if attempt <= len(CANCEL_WAITS_FOR_START_S):
            raise RetryLater(
                CANCEL_WAITS_FOR_START_S[attempt - 1], f"batch {cancel.batch_id} not started yet"
            ) from None
        await dead_letter(js, SERVICE, raw, f"no batch {cancel.batch_id} was started")
        return
    kv = await js.key_value(KV_CANCELS)
    await kv.put(cancel.batch_id, cancel.reason.encode())
    log.info("batch %s cancelled: %s", cancel.batch_id, cancel.reason)


Handler = Callable[[JetStreamContext, Msg], Awaitable[None]]


async def run_handler(js: JetStreamContext, raw: Msg, handle: Handler, keepalive_s: float) -> None:
    """Handle one message and settle it: retried only for faults that go away by themselves."""
    try:
        async with KeepAlive(raw, keepalive_s):
            await handle(js, raw)
    except RetryLater as later:
        log.info("%s: %s; retrying in %.0f s", raw.subject, later, later.delay_s)
        try:
            await raw.nak(delay=later.delay_s)
        except Exception as exc:  # the server redelivers after ack_wait
            log.warning("could not nak %s: %r", raw.subject, exc)
        return
    except TRANSIENT:
        log.exception("%s failed; will retry", raw.subject)
        await settle([raw], ok=False)
        return
    except Exception as exc:
        log.exception("%s failed in an unexpected way; dead-lettering it", raw.subject)
        try:
            await dead_letter(js, SERVICE, raw, f"unexpected {type(exc).__name__} in the generator; not retried")
        except Exception:
            await settle([raw], ok=False)
            return
    await settle([raw], ok=True)


def create_app() -> FastStream:
    settings = get_settings()
    broker, app = new_service(SERVICE, settings)
    access = SuiteAccess(dirs=tuple(settings.suite_dirs), max_upload_bytes=settings.suite_max_bytes)

    async def start(js: JetStreamContext, raw: Msg) -> None:
        await handle_start(js, raw, access)

    def handler(handle: Handler) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(raw: Msg) -> None:
            await run_handler(jetstream(broker), raw, handle, bindings[0].keepalive_s)

        return on_message

    bindings = [
        consume(app, broker, SERVICE, GENERATOR_START, on_message=handler(start), slots=4),
        consume(app, broker, SERVICE, GENERATOR_CANCEL, on_message=handler(handle_cancel), slots=2),
    ]
    return app
