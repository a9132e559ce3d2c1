"""The shape every per-message worker shares: parse, work kept alive, publish, ack.

A message that does not parse goes to the dead-letter subject and is acked; a failure to
publish the result is transient and the message is negatively acked with a delay.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError

from contracts.events import Event
from services.runtime.bus import InProgress, dead_letter, publish_events, settle
from services.runtime.errors import describe_error

log = logging.getLogger("evalbus.worker")
In = TypeVar("In", bound=BaseModel)


async def work_one(
    js: JetStreamContext,
    service: str,
    raw: Msg,
    model: type[In],
    work: Callable[[In], Awaitable[Event]],
    alive: InProgress,
) -> None:
    try:
        evt = model.model_validate_json(raw.data)
    except (ValidationError, ValueError) as exc:
        try:
            await dead_letter(js, service, raw, f"invalid {model.__name__}: {describe_error(exc)}")
        except Exception:
            log.exception("could not dead-letter %s", raw.subject)
            await settle([raw], ok=False)
            return
        await settle([raw], ok=True)
        return
    alive.add(raw)
    try:
        result = await work(evt)
        await publish_events(js, [result])
    except Exception:
        alive.discard(raw)
        log.exception("%s failed on %s; will be redelivered", service, raw.subject)
        await settle([raw], ok=False)
        return
    finally:
        alive.discard(raw)  # before settling, and also when cancelled
    await settle([raw], ok=True)


async def work_batch(
    js: JetStreamContext,
    service: str,
    raws: list[Msg],
    parse: Callable[[Msg], In],
    work: Callable[[list[In]], Awaitable[Sequence[Event]]],
    alive: InProgress | None = None,
) -> None:
    """Batched form: bad messages are dead-lettered one by one and never fail the others;
    the good ones are worked on together, their results published pipelined, then all acked."""
    good: list[In] = []
    good_raws: list[Msg] = []
    for raw in raws:
        try:
            good.append(parse(raw))
            good_raws.append(raw)
        except (ValidationError, ValueError) as exc:
            try:
                await dead_letter(js, service, raw, describe_error(exc))
            except Exception:
                log.exception("could not dead-letter %s", raw.subject)
                await settle([raw], ok=False)
                continue
            await settle([raw], ok=True)
    if not good:
        return
    if alive is not None:
        for raw in good_raws:
            alive.add(raw)
    try:
        results = await work(good)
        await publish_events(js, results)
    except Exception:
        log.exception("%s failed on a batch of %d; will be redelivered", service, len(good))
        await settle(good_raws, ok=False)
        return
    finally:
        if alive is not None:
            for raw in good_raws:
                alive.discard(raw)
    await settle(good_raws, ok=True)
