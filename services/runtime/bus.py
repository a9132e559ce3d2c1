"""The NATS side every service shares: the broker, pipelined publishing, dead letters.

Publishes go through JetStream's `publish_async` (pipelined, tens of thousands per second)
with the event's deterministic id as `Nats-Msg-Id`, so a re-publish after a crash is dropped
by the stream and, past the dedup window, by the recorder's keys.
"""

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from faststream.nats import NatsBroker, NatsUserPassword
from nats.errors import (
    BadHeaderError,
    BadSubjectError,
    ConnectionClosedError,
    ConnectionDrainingError,
    MaxPayloadError,
    OutboundBufferLimitError,
)
from nats.js.api import PubAck
from pydantic import BaseModel

from contracts import subjects
from contracts.events import DeadLetter, Event

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext

log = logging.getLogger("evalbus.bus")

PUBLISH_TIMEOUT_S = 30.0
# Refused by nats-py's publish before it yields, after publish_async registered its future.
_REFUSED_AT_ONCE = (
    OutboundBufferLimitError,
    MaxPayloadError,
    BadHeaderError,
    BadSubjectError,
    ConnectionClosedError,
    ConnectionDrainingError,
)


class _Lifecycle:
    stopping = False


def inbox_prefix(service: str) -> str:
    # nats-py appends its random token right after the prefix: the trailing dot keeps replies
    # inside `_INBOX.<service>.>`, which is all a service may subscribe to under permissions.
    return f"_INBOX.{service}."


def make_broker(service: str, nats_url: str, user: str | None = None, password: str | None = None) -> NatsBroker:
    """A broker that reconnects forever and exits the process if the connection is closed for good."""

    async def on_error(exc: Exception) -> None:
        # Permission violations reach only this callback; elsewhere they look like timeouts.
        log.error("nats error in %s: %r", service, exc)

    async def on_disconnect() -> None:
        # A deliberate close (drain on shutdown) calls this too: that is no outage.
        if _Lifecycle.stopping:
            log.info("%s: NATS connection closing for shutdown", service)
        else:
            log.warning("%s disconnected from NATS; reconnecting", service)

    async def on_reconnect() -> None:
        log.warning("%s reconnected to NATS", service)

    async def on_closed() -> None:
        if _Lifecycle.stopping:
            log.info("%s: NATS connection closed (shutdown)", service)
            return
        log.critical("%s: NATS connection closed for good; exiting so a supervisor restarts it", service)
        os._exit(3)

    return NatsBroker(
        nats_url.split(","),
        name=f"evalbus-{service}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        closed_cb=on_closed,
        inbox_prefix=inbox_prefix(service).rstrip("."),  # the connection adds its own dot
        security=NatsUserPassword(username=user, password=password or "") if user else None,
        graceful_timeout=30.0,
        logger=logging.getLogger(f"evalbus.{service}.broker"),
        log_level=logging.DEBUG,  # per-message logs stay below the WARNING level set in service.py
        js_options={"publish_async_max_pending": 4000},
    )


def mark_stopping() -> None:
    """Called on a deliberate shutdown so the closed-connection callback does not exit(3)."""
    _Lifecycle.stopping = True


def jetstream(broker: NatsBroker) -> "JetStreamContext":
    return broker.config.connection_state.stream


def encode(model: BaseModel) -> bytes:
    return model.to_json() if isinstance(model, Event) else model.model_dump_json().encode()


async def publish_events(js: "JetStreamContext", events: Iterable[Event]) -> list[PubAck]:
    """Publish events pipelined and wait for every PubAck; raises if any is not stored."""
    futures: list[asyncio.Future[PubAck]] = []
    try:
        for ev in events:
            futures.append(
                await js.publish_async(
                    ev.subject,
                    encode(ev),
                    headers={"Nats-Msg-Id": ev.event_id},
                    stream=subjects.STREAM_EVENTS,
                    wait_stall=PUBLISH_TIMEOUT_S,  # a full pending limit fails the publish, never hangs it
                )
            )
    except BaseException as exc:
        # Each future holds a slot of nats-py's pending limit until it is done: one left
        # unawaited (its PubAck lost with a connection) would hold it for good.
        for future in futures:
            future.cancel()
        if isinstance(exc, _REFUSED_AT_ONCE):
            _cancel_orphan(js)
        raise
    if not futures:
        return []
    async with asyncio.timeout(PUBLISH_TIMEOUT_S):  # cheaper than wait_for's extra task per call
        if len(futures) == 1:
            return [await futures[0]]
        return list(await asyncio.gather(*futures))


def _cancel_orphan(js: "JetStreamContext") -> None:
    """nats-py's publish_async registers its future before publishing; when the publish is refused
    at once (no connection and a full reconnect buffer, a payload over the limit) the future is
    never returned and never resolved, and keeps its pending slot. Nothing ran in between, so it
    is the newest one registered."""
    pending: dict[str, asyncio.Future[PubAck]] | None = getattr(js, "_publish_async_futures", None)
    if pending:
        orphan = pending[next(reversed(pending))]
        if not orphan.done():
            orphan.cancel()


async def publish_raw(
    js: "JetStreamContext", subject: str, payload: bytes, msg_id: str | None = None, stream: str | None = None
) -> PubAck:
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    return await js.publish(subject, payload, timeout=PUBLISH_TIMEOUT_S, stream=stream, headers=headers)


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


def retry_delay(msg: "Msg", base_s: float = 2.0, cap_s: float = 120.0) -> float:
    """Exponential in the delivery count: a fault that lasts gets retried less and less often."""
    try:
        delivered = int(msg.metadata.num_delivered or 1)
    except Exception:  # not a JetStream message
        delivered = 1
    return min(cap_s, base_s * 2 ** (delivered - 1))


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


class KeepAlive:
    """Tells JetStream a message is still being worked on, so a long model call is not redelivered."""

    def __init__(self, msg: "Msg", every_s: float) -> None:
        self._msg = msg
        self._every = every_s
        self._task: asyncio.Task[Any] | None = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                await self._msg.in_progress()
            except Exception as exc:
                log.debug("in_progress failed: %r", exc)

    async def __aenter__(self) -> "KeepAlive":
        self._task = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


class InProgress:
    """Keeps every message a consumer works on alive with one periodic task, where `KeepAlive`
    costs a task and a timer per message. A message held for `every_s()` gets an in-progress
    signal, and another each `every_s()` after that (checked every half period, so at most 1.5
    periods apart; every_s is a third of the ack wait)."""

    def __init__(self, every_s: Callable[[], float]) -> None:
        self._every_s = every_s
        self._held: dict[int, tuple[Msg, float]] = {}  # by id(): nats-py's Msg is not hashable
        self._task: asyncio.Task[None] | None = None

    def add(self, msg: "Msg") -> None:
        loop = asyncio.get_running_loop()
        self._held[id(msg)] = (msg, loop.time())
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._tick())

    def discard(self, msg: "Msg") -> None:
        self._held.pop(id(msg), None)

    def __len__(self) -> int:
        return len(self._held)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while self._held:  # ends when nothing is held; add() starts it again
            every = self._every_s()
            await asyncio.sleep(every / 2)
            now = loop.time()
            due = [(key, msg) for key, (msg, since) in self._held.items() if now - since >= every]
            for key, msg in due:
                self._held[key] = (msg, now)
            for key, msg in due:
                if self._held.get(key, (None,))[0] is not msg:  # finished meanwhile
                    continue
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.debug("in_progress failed: %r", exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
