"""The one place a message meets a handler: parse, check the subject, keep alive, work, publish the
events the handler returns, ack.

Handlers never see a message. A parser (`typed(Model)` by default) turns what arrived into the
handler's input; a message that does not parse, or whose subject does not name its body's batch
and type, is dead-lettered with the reason and acked (or only acked, where the consumer reads a
dead-letter stream itself). A handler says what else should happen by what it raises:

- `RetryLater(delay_s, why)`: not now; the message comes back after `delay_s`;
- `Refused(reason)`: this message can never be used; dead-lettered with the reason, acked;
- an error its consumer calls transient (the broker or the database away): retried with a growing
  delay, never split or dead-lettered for it;
- anything else: retried (and in the end dead-lettered by the consumer's max deliveries), or, for
  consumers declared `unexpected="dead_letter"`, dead-lettered at once.

The batched form isolates poison: when a batch's work fails, it is split in halves and each half
worked on again, down to single messages, so only the message that fails is retried while the
others are handled and acked at once.
"""

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Generic, TypeVar

from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from pydantic import BaseModel, ValidationError

from contracts.base import Event
from contracts.validation import describe_error
from services.runtime.messaging.acks import dead_letter, settle, stream_seq
from services.runtime.messaging.keepalive import InProgress
from services.runtime.messaging.publishing import JetStreamPublisher
from services.runtime.observability.metrics import ConsumerMetrics

if TYPE_CHECKING:
    from services.runtime.observability.tracing import Tracing

log = logging.getLogger("evalbus.worker")
In = TypeVar("In", bound=BaseModel)
T = TypeVar("T")  # what a consumer's parser makes of a message
# Failed attempts one batch may spend on finding its poison (a bisection finds one bad message in
# 256 with 9): past this the fault is not one message's, and the rest is retried as a whole.
MAX_FAILED_ATTEMPTS = 48
# Deliveries a deferred message gets (retry delays 2+4+8+16 s) before it is dead-lettered: a
# deferred message still holds a slot of the consumer's max ack pending, so a flood of them must
# not hold the consumer for the whole max-deliveries horizon (~30 min).
DEFERRED_DELIVERIES = 5

Results = Event | Sequence[Event] | None
_NO_SPAN = contextlib.nullcontext()


@dataclass(frozen=True)
class Incoming:
    """What a parser sees of a message: its subject and bytes, never the message itself."""

    subject: str
    data: bytes
    stream_seq: int | None = None
    delivered: int = 1

    @classmethod
    def of(cls, raw: Msg) -> "Incoming":
        return cls(raw.subject, raw.data, stream_seq(raw), delivered(raw))


Parse = Callable[[Incoming], T | None]  # None: a message this consumer passes by (acked)


class Invalid(StrEnum):
    """What becomes of a message that does not parse."""

    DEAD_LETTER = "dead_letter"
    DROP = "drop"  # logged and acked: for consumers of the dead-letter stream itself


class Unexpected(StrEnum):
    """What becomes of a message whose handler failed in a way no one declared."""

    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class SubjectMismatch(ValueError):
    """An event published on a subject that does not name its own batch and type."""


class RetryLater(Exception):
    """Not now: negatively acknowledge the message so it comes back after `delay_s`."""

    def __init__(self, delay_s: float, why: str) -> None:
        super().__init__(why)
        self.delay_s = delay_s


class Refused(Exception):
    """This message can never be used: dead-letter it with `reason` and ack it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def check_subject(subject: str, evt: object) -> None:
    """Raise SubjectMismatch unless `subject` is the event's own: a prompt.failed of batch B on
    batch A's subject must not act on A (nor be taken as B's when A's subject was allowed)."""
    if isinstance(evt, Event) and subject != evt.subject:
        raise SubjectMismatch(
            f"subject {subject[:300]!r} does not match the event (batch {evt.batch_id!r}, "
            f"{evt.entity}.{evt.verb}: expected {evt.subject!r})"
        )


def typed(model: type[In]) -> Parse[In]:
    """The default parser: the body as `model`, on the event's own subject."""

    def parse(msg: Incoming) -> In:
        try:
            evt = model.model_validate_json(msg.data)
        except ValidationError as exc:
            raise ValueError(f"invalid {model.__name__}: {describe_error(exc)}") from None
        check_subject(msg.subject, evt)
        return evt

    parse.__qualname__ = f"typed({model.__name__})"
    return parse


def delivered(raw: Msg) -> int:
    try:
        return int(raw.metadata.num_delivered or 1)
    except Exception:  # not a JetStream message
        return 1


def never_transient(exc: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class Policy(Generic[T]):
    """How one consumer treats its messages (declared with it, applied here)."""

    service: str
    parse: Parse[T]
    publisher: JetStreamPublisher
    alive: InProgress
    invalid: Invalid = Invalid.DEAD_LETTER
    transient: Callable[[BaseException], bool] = never_transient
    unexpected: Unexpected = Unexpected.RETRY
    # Observability (services/runtime/observability/), None while off.
    metrics: ConsumerMetrics | None = None
    tracer: "Tracing | None" = None
    durable: str = ""


async def dead_letter_and_ack(policy: Policy[T], raw: Msg, reason: str, cause: str = "refused") -> None:
    try:
        await dead_letter(policy.publisher.js, policy.service, raw, reason)
    except Exception:
        log.exception("could not dead-letter %s", raw.subject)
        if policy.metrics is not None:
            policy.metrics.outcome("redelivered")
        await settle([raw], ok=False)
        return
    if policy.metrics is not None:
        policy.metrics.dead_lettered(cause)
    await settle([raw], ok=True)


async def _unreadable(policy: Policy[T], raw: Msg, exc: Exception) -> None:
    """Settle a message its parser refused: parsing is pure, so whatever it raised
    (ValidationError, RecursionError...) is this message's."""
    if isinstance(exc, ValidationError | ValueError):
        reason = describe_error(exc)
    else:
        log.warning("%s could not parse %s: %r", policy.service, raw.subject[:300], exc)
        reason = f"could not parse: {type(exc).__name__}"
    if policy.metrics is not None:
        policy.metrics.unparsed.inc()
    if policy.invalid is Invalid.DROP:
        log.warning("%s: unusable message on %s: %s", policy.service, raw.subject[:300], reason[:300])
        if policy.metrics is not None:
            policy.metrics.outcome("dropped")
        await settle([raw], ok=True)
    else:
        await dead_letter_and_ack(policy, raw, reason, "invalid")


async def handle_one(policy: Policy[T], raw: Msg, work: Callable[[T], Awaitable[Results]]) -> None:
    """One message, one handler call: the per-message consumers' path. The parser and the handler
    are called from here directly (the consumer loop, this, then service code)."""
    try:
        value = policy.parse(Incoming.of(raw))
    except Exception as exc:
        await _unreadable(policy, raw, exc)
        return
    m = policy.metrics
    if value is None:  # passed by
        if m is not None:
            m.passed.inc()
            m.outcome("passed")
        await settle([raw], ok=True)
        return
    if m is not None:
        m.consumed(value, raw.subject)
    # A span per message only while tracing is on; else one shared no-op context (no frame, no allocation).
    with _NO_SPAN if policy.tracer is None else policy.tracer.handling(policy.durable, raw, value):
        policy.alive.add(raw)
        started = time.perf_counter()
        try:
            results = await work(value)
            if results is not None:
                await policy.publisher.publish([results] if isinstance(results, Event) else results)
        except RetryLater as later:
            policy.alive.discard(raw)
            if m is not None:
                m.seconds.observe(time.perf_counter() - started)
                m.outcome("retry_later")
            log.info("%s: %s; retrying in %.0f s", raw.subject, later, later.delay_s)
            try:
                await raw.nak(delay=later.delay_s)
            except Exception as exc:  # the server redelivers after ack_wait
                log.warning("could not nak %s: %r", raw.subject, exc)
            return
        except Refused as refused:
            policy.alive.discard(raw)
            if m is not None:
                m.seconds.observe(time.perf_counter() - started)
            await dead_letter_and_ack(policy, raw, refused.reason)
            return
        except Exception as exc:
            policy.alive.discard(raw)
            if m is not None:
                m.seconds.observe(time.perf_counter() - started)
            if policy.unexpected is Unexpected.DEAD_LETTER and not policy.transient(exc):
                log.exception("%s failed on %s in an unexpected way; dead-lettering it", policy.service, raw.subject)
                await dead_letter_and_ack(
                    policy, raw, f"unexpected {type(exc).__name__} in the {policy.service}; not retried", "unexpected"
                )
            else:
                log.exception("%s failed on %s; will be redelivered", policy.service, raw.subject)
                if m is not None:
                    m.outcome("redelivered")
                await settle([raw], ok=False)
            return
        finally:
            policy.alive.discard(raw)  # before settling, and also when cancelled
        if m is not None:
            m.seconds.observe(time.perf_counter() - started)
            m.acked.inc()
        await settle([raw], ok=True)


async def handle_isolated(
    service: str,
    items: Sequence[tuple[Msg, T]],
    attempt: Callable[[list[T]], Awaitable[object]],
    transient: Callable[[BaseException], bool] = never_transient,
    alive: InProgress | None = None,
    metrics: ConsumerMetrics | None = None,
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
        if metrics is not None:
            metrics.outcome("acked" if ok else "redelivered", len(raws))
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


Screen = Callable[[list[T]], Awaitable[Sequence[Refusal | None]]]


async def _apply_screen(
    policy: Policy[T], good: list[tuple[Msg, T]], verdicts: Sequence[Refusal | None]
) -> list[tuple[Msg, T]]:
    kept: list[tuple[Msg, T]] = []
    for (raw, value), refusal in zip(good, verdicts, strict=True):
        if refusal is None:
            kept.append((raw, value))
        elif refusal.retry and delivered(raw) < DEFERRED_DELIVERIES:
            log.info("%s: %s not taken yet (%s); will be redelivered", policy.service, raw.subject, refusal.reason)
            if policy.metrics is not None:
                policy.metrics.outcome("deferred")
            await settle([raw], ok=False)
        elif refusal.retry:
            await dead_letter_and_ack(policy, raw, f"{refusal.reason} after {delivered(raw)} deliveries", "deferred")
        else:
            await dead_letter_and_ack(policy, raw, refusal.reason, "screened")
    return kept


async def handle_batch(
    policy: Policy[T],
    raws: list[Msg],
    work: Callable[[list[T]], Awaitable[Results]],
    screen: Screen[T] | None = None,
) -> None:
    """What gathered, one handler call: bad messages are dead-lettered one by one and never fail the
    others; the good ones are worked on together, their results published pipelined, then all
    acked. `screen` (one call for the whole batch, e.g. one query) may refuse some. The first
    attempt calls parser, screen and handler from here directly; only a failing batch is split
    (`handle_isolated`)."""
    m = policy.metrics
    good: list[tuple[Msg, T]] = []
    for raw in raws:
        try:
            value = policy.parse(Incoming.of(raw))
        except Exception as exc:
            await _unreadable(policy, raw, exc)
            continue
        if value is None:  # passed by
            if m is not None:
                m.passed.inc()
                m.outcome("passed")
            await settle([raw], ok=True)
        else:
            if m is not None:
                m.consumed(value, raw.subject)
            good.append((raw, value))
    if good and screen is not None:
        try:
            verdicts = await screen([value for _, value in good])
        except Exception:
            log.exception("%s could not screen a batch of %d; will be redelivered", policy.service, len(good))
            if m is not None:
                m.outcome("redelivered", len(good))
            await settle([raw for raw, _ in good], ok=False)
            return
        good = await _apply_screen(policy, good, verdicts)
    if not good:
        return
    with _NO_SPAN if policy.tracer is None else policy.tracer.handling_batch(policy.durable, good):
        for raw, _ in good:
            policy.alive.add(raw)

        async def attempt(values: list[T]) -> None:
            await _publish_results(policy, await work(values))

        def not_ours(exc: BaseException) -> bool:
            return isinstance(exc, PublishFailed) or policy.transient(exc)

        started = time.perf_counter()
        try:
            try:
                await _publish_results(policy, await work([value for _, value in good]))
            except Exception as exc:
                if m is not None:
                    m.seconds.observe(time.perf_counter() - started)
                if not_ours(exc) or len(good) == 1:
                    log.exception("%s failed on a batch of %d; will be redelivered", policy.service, len(good))
                    if m is not None:
                        m.outcome("redelivered", len(good))
                    await settle([raw for raw, _ in good], ok=False)
                else:
                    log.warning("%s failed on a batch of %d (%r); splitting it", policy.service, len(good), exc)
                    middle = len(good) // 2
                    await handle_isolated(policy.service, good[:middle], attempt, not_ours, policy.alive, m)
                    await handle_isolated(policy.service, good[middle:], attempt, not_ours, policy.alive, m)
                return
            if m is not None:
                m.seconds.observe(time.perf_counter() - started)
                m.outcome("acked", len(good))
            await settle([raw for raw, _ in good], ok=True)
        finally:
            for raw, _ in good:  # also when cancelled
                policy.alive.discard(raw)


async def _publish_results(policy: Policy[T], results: Results) -> None:
    if results is None:
        return
    try:
        await policy.publisher.publish([results] if isinstance(results, Event) else results)
    except MaxPayloadError:
        raise  # a result too large to publish is that message's fault: split
    except Exception as exc:
        raise PublishFailed(f"results not published: {exc!r}") from exc
