"""The shape every worker shares: parse, check the subject, work kept alive, publish, ack.

A message that does not parse, or whose subject does not name its body's batch and type, goes to
the dead-letter subject and is acked; a failure to publish the result is transient and the
message is negatively acked with a delay.

The batched form isolates poison: when a batch's work fails, it is split in halves and each half
worked on again, down to single messages, so only the message that fails is retried (and in the
end dead-lettered by the consumer's max deliveries) while the others are handled and acked at once.
"""

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from pydantic import BaseModel, ValidationError

from contracts.events import Event
from services.runtime.bus import InProgress, dead_letter, publish_events, settle
from services.runtime.errors import describe_error

log = logging.getLogger("evalbus.worker")
In = TypeVar("In", bound=BaseModel)
T = TypeVar("T")  # what a batched consumer parses its messages into (None for those it passes by)
# Failed attempts one batch may spend on finding its poison (a bisection finds one bad message in
# 256 with 9): past this the fault is not one message's, and the rest is retried as a whole.
MAX_FAILED_ATTEMPTS = 48
# Deliveries a deferred message gets (retry delays 2+4+8+16 s) before it is dead-lettered: a
# deferred message still holds a slot of the consumer's max ack pending, so a flood of them must
# not hold the consumer for the whole max-deliveries horizon (~30 min).
DEFERRED_DELIVERIES = 5


class SubjectMismatch(ValueError):
    """An event published on a subject that does not name its own batch and type."""


def check_subject(subject: str, evt: object) -> None:
    """Raise SubjectMismatch unless `subject` is the event's own: a prompt.failed of batch B on
    batch A's subject must not act on A (nor be taken as B's when A's subject was allowed)."""
    if isinstance(evt, Event) and subject != evt.subject:
        raise SubjectMismatch(
            f"subject {subject[:300]!r} does not match the event (batch {evt.batch_id!r}, "
            f"{evt.entity}.{evt.verb}: expected {evt.subject!r})"
        )


class PublishFailed(Exception):
    """The broker did not take a batch's results: no message's fault, so the batch is not split
    (splitting would wait out a publish timeout per half while the broker is away)."""


@dataclass(frozen=True)
class Refusal:
    """A parsed message a screen does not take: dead-lettered with `reason`, or with `retry`
    negatively acked to come back later (what it depends on may not be recorded yet), up to
    DEFERRED_DELIVERIES deliveries, then dead-lettered."""

    reason: str
    retry: bool = False


def _delivered(raw: Msg) -> int:
    try:
        return int(raw.metadata.num_delivered or 1)
    except Exception:  # not a JetStream message
        return 1


def _never_transient(exc: BaseException) -> bool:
    return False


async def dead_letter_and_ack(js: JetStreamContext, service: str, raw: Msg, reason: str) -> None:
    try:
        await dead_letter(js, service, raw, reason)
    except Exception:
        log.exception("could not dead-letter %s", raw.subject)
        await settle([raw], ok=False)
        return
    await settle([raw], ok=True)


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
        check_subject(raw.subject, evt)
    except (ValidationError, ValueError) as exc:
        await dead_letter_and_ack(js, service, raw, f"invalid {model.__name__}: {describe_error(exc)}")
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


async def handle_isolated(
    service: str,
    items: Sequence[tuple[Msg, T]],
    attempt: Callable[[list[T]], Awaitable[object]],
    transient: Callable[[BaseException], bool] = _never_transient,
    alive: InProgress | None = None,
) -> None:
    """`attempt` the items together and ack them; when it raises, split them in halves and attempt
    each, down to single items, which alone are negatively acked (with the growing delay). A
    `transient` error (the database or the broker is down) is no one message's fault: the whole
    group is retried, without splitting."""
    failed_attempts = 0

    async def release(group: Sequence[tuple[Msg, T]], ok: bool) -> None:
        raws = [raw for raw, _ in group]
        if alive is not None:
            for raw in raws:
                alive.discard(raw)
        await settle(raws, ok=ok)

    async def run(group: Sequence[tuple[Msg, T]]) -> None:
        nonlocal failed_attempts
        try:
            await attempt([value for _, value in group])
        except Exception as exc:
            failed_attempts += 1
            if len(group) == 1:
                log.exception("%s failed on %s; will be redelivered", service, group[0][0].subject)
            elif transient(exc) or failed_attempts >= MAX_FAILED_ATTEMPTS:
                log.exception("%s failed on a batch of %d; will be redelivered", service, len(group))
            else:
                log.warning("%s failed on a batch of %d (%r); splitting it", service, len(group), exc)
                middle = len(group) // 2
                await run(group[:middle])
                await run(group[middle:])
                return
            await release(group, ok=False)
            return
        await release(group, ok=True)

    if items:
        await run(items)


async def work_batch(
    js: JetStreamContext,
    service: str,
    raws: list[Msg],
    parse: Callable[[Msg], T],
    work: Callable[[list[T]], Awaitable[Sequence[Event]]],
    alive: InProgress | None = None,
    screen: Callable[[list[T]], Awaitable[Sequence[Refusal | None]]] | None = None,
    transient: Callable[[BaseException], bool] = _never_transient,
) -> None:
    """Batched form: bad messages are dead-lettered one by one and never fail the others; the
    good ones are worked on together, their results published pipelined, then all acked. `screen`
    (one call for the whole batch, e.g. one query) may refuse some; a failing batch is split."""
    good: list[tuple[Msg, T]] = []
    for raw in raws:
        try:
            evt = parse(raw)
            check_subject(raw.subject, evt)
        except (ValidationError, ValueError) as exc:
            await dead_letter_and_ack(js, service, raw, describe_error(exc))
            continue
        except Exception as exc:  # parsing is pure: whatever it raises (RecursionError...) is this message's
            log.warning("%s could not parse %s: %r", service, raw.subject[:300], exc)
            await dead_letter_and_ack(js, service, raw, f"could not parse: {type(exc).__name__}")
            continue
        good.append((raw, evt))
    if good and screen is not None:
        try:
            verdicts = await screen([evt for _, evt in good])
        except Exception:
            log.exception("%s could not screen a batch of %d; will be redelivered", service, len(good))
            await settle([raw for raw, _ in good], ok=False)
            return
        kept: list[tuple[Msg, T]] = []
        for (raw, evt), refusal in zip(good, verdicts, strict=True):
            if refusal is None:
                kept.append((raw, evt))
            elif refusal.retry and _delivered(raw) < DEFERRED_DELIVERIES:
                log.info("%s: %s not taken yet (%s); will be redelivered", service, raw.subject, refusal.reason)
                await settle([raw], ok=False)
            elif refusal.retry:
                await dead_letter_and_ack(js, service, raw, f"{refusal.reason} after {_delivered(raw)} deliveries")
            else:
                await dead_letter_and_ack(js, service, raw, refusal.reason)
        good = kept
    if not good:
        return
    if alive is not None:
        for raw, _ in good:
            alive.add(raw)

    async def attempt(events: list[T]) -> None:
        results = await work(events)
        try:
            await publish_events(js, results)
        except MaxPayloadError:
            raise  # a result too large to publish is that message's fault: split
        except Exception as exc:
            raise PublishFailed(f"{len(results)} results not published: {exc!r}") from exc

    def not_ours(exc: BaseException) -> bool:
        return isinstance(exc, PublishFailed) or transient(exc)

    try:
        await handle_isolated(service, good, attempt, not_ours, alive)
    finally:
        if alive is not None:  # also when cancelled
            for raw, _ in good:
                alive.discard(raw)
