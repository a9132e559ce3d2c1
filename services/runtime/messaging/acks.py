"""Settling a message: ack, negative ack with a growing delay, or a dead letter with the reason."""

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from contracts import subjects
from contracts.ops import DeadLetter
from services.runtime.messaging.publishing import encode, publish_raw

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger("evalbus.bus")


def stream_seq(msg: "Msg") -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # a core message has no JetStream metadata
        return None


async def dead_letter(js: "JetStreamContext", service: str, msg: "Msg", reason: str) -> None:
    """Keep a message we cannot use on the DLQ stream, with the reason; the caller then acks it."""
    seq = stream_seq(msg)

    def storable(text: str) -> str:  # PostgreSQL stores no NUL and no lone surrogate: escape them
        text = text.replace("\x00", "\\x00")
        return text if text.isascii() else text.encode("utf-8", errors="backslashreplace").decode("utf-8")

    letter = DeadLetter(
        service=service,
        subject=storable(msg.subject),
        reason=storable(reason[:4000]),
        payload=storable(msg.data[:65_536].decode("utf-8", errors="backslashreplace")),
        stream_seq=seq,
    )
    msg_id = f"dlq-{service}-{seq}" if seq is not None else None
    await publish_raw(js, subjects.dlq(service), encode(letter), msg_id=msg_id, stream=subjects.STREAM_DLQ)
    log.warning("dead-lettered %s (seq %s) from %s: %s", msg.subject, seq, service, reason[:300])


def delay_after(delivered: int, base_s: float = 2.0, cap_s: float = 120.0) -> float:
    """Exponential in the delivery count: a fault that lasts gets retried less and less often."""
    return min(cap_s, base_s * 2 ** (max(1, delivered) - 1))


def retry_delay(msg: "Msg", base_s: float = 2.0, cap_s: float = 120.0) -> float:
    try:
        delivered = int(msg.metadata.num_delivered or 1)
    except Exception:  # not a JetStream message
        delivered = 1
    return delay_after(delivered, base_s, cap_s)


async def settle(msgs: Sequence["Msg"], *, ok: bool) -> None:
    """Ack, or negatively ack with a growing delay so a transient fault is not a hot loop."""
    for m in msgs:
        try:
            if ok:
                await m.ack()
            else:
                await m.nak(delay=retry_delay(m))
        except Exception as exc:  # the connection dropped: the server redelivers after ack_wait
            log.warning("could not settle %s: %r", m.subject, exc)
