"""Generator service: `faststream run --factory services.generator.app:create_app`."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from itertools import chain, islice, repeat

from faststream import FastStream
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import ValidationError

from contracts.events import BatchRejected, CancelBatchRequested
from contracts.topology import GENERATOR_CANCEL, GENERATOR_START, KV_CANCELS, KV_STARTS
from services.generator.logic import Invalid, Plan, plan_batch, read_start
from services.runtime.bus import KeepAlive, dead_letter, jetstream, publish_events, settle
from services.runtime.errors import describe_error
from services.runtime.service import consume, new_service
from services.runtime.settings import get_settings

log = logging.getLogger("evalbus.generator")
SERVICE = "generator"
PUBLISH_CHUNK = 1000
# Small first chunks: the first prompts reach the model while the rest are still being built.
FIRST_CHUNKS = (16, 128)


async def _publish_plan(js: JetStreamContext, plan: Plan) -> None:
    await publish_events(js, [plan.accepted])
    prompts = plan.prompts()
    for size in chain(FIRST_CHUNKS, repeat(PUBLISH_CHUNK)):
        chunk = list(islice(prompts, size))
        if not chunk:
            break
        await publish_events(js, chunk)


async def handle_start(js: JetStreamContext, raw: Msg) -> None:
    """Validate a start command, then publish accepted + every prompt, or a rejection."""
    start = read_start(raw.subject, raw.data)
    if isinstance(start, Invalid):
        rejection = start.rejection()
        if rejection is not None:  # else nobody can be told: the dead letter keeps it
            await publish_events(js, [rejection])
        await dead_letter(js, SERVICE, raw, start.reason)
        return

    kv = await js.key_value(KV_STARTS)
    try:
        seen = await kv.get(start.batch_id)
        log.info("batch %s was already started (%s); ignoring the repeat", start.batch_id, seen.value)
        return
    except KeyNotFoundError:
        pass

    # Validation reads the whole suite once; keep the event loop free for acks and keep-alives.
    outcome = await asyncio.to_thread(plan_batch, start)
    if isinstance(outcome, BatchRejected):
        await publish_events(js, [outcome])
        await kv.put(start.batch_id, b"rejected")
        log.info("rejected batch %s: %s", start.batch_id, outcome.reason)
        return
    await _publish_plan(js, outcome)
    await kv.put(start.batch_id, b"accepted")
    log.info("accepted batch %s: %d prompts", start.batch_id, outcome.accepted.total_prompts)


async def handle_cancel(js: JetStreamContext, raw: Msg) -> None:
    """Record the cancel where every runner and judge replica watches for it."""
    try:
        cancel = CancelBatchRequested.model_validate_json(raw.data)
    except (ValidationError, ValueError) as exc:
        await dead_letter(js, SERVICE, raw, f"invalid cancel event: {describe_error(exc)}")
        return
    kv = await js.key_value(KV_CANCELS)
    await kv.put(cancel.batch_id, cancel.reason.encode())
    log.info("batch %s cancelled: %s", cancel.batch_id, cancel.reason)


def create_app() -> FastStream:
    settings = get_settings()
    broker, app = new_service(SERVICE, settings)

    def handler(handle: Callable[[JetStreamContext, Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(raw: Msg) -> None:
            try:
                async with KeepAlive(raw, bindings[0].keepalive_s):
                    await handle(jetstream(broker), raw)
            except Exception:
                log.exception("%s failed; will retry", raw.subject)
                await settle([raw], ok=False)
                return
            await settle([raw], ok=True)

        return on_message

    bindings = [
        consume(app, broker, SERVICE, GENERATOR_START, on_message=handler(handle_start), slots=4),
        consume(app, broker, SERVICE, GENERATOR_CANCEL, on_message=handler(handle_cancel), slots=2),
    ]
    return app
