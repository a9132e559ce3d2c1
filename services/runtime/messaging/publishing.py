"""Publishing: pipelined through JetStream's `publish_async`, with the event's deterministic id as
`Nats-Msg-Id`, so a re-publish after a crash is dropped by the stream and, past the dedup window,
by the recorder's keys."""

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

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
from contracts.base import Event
from services.runtime.observability import metrics

if TYPE_CHECKING:
    from nats.js import JetStreamContext

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


# Adds headers to each published event (tracing's `traceparent`); None, the default, adds nothing.
HeaderHook = Callable[[dict[str, str], Event], None]
_header_hook: HeaderHook | None = None


def set_header_hook(hook: HeaderHook | None) -> None:
    global _header_hook
    _header_hook = hook


def encode(model: BaseModel) -> bytes:
    return model.to_json() if isinstance(model, Event) else model.model_dump_json().encode()


async def publish_events(js: "JetStreamContext", events: Iterable[Event]) -> list[PubAck]:
    """Publish events pipelined and wait for every PubAck; raises if any is not stored."""
    futures: list[asyncio.Future[PubAck]] = []
    try:
        for ev in events:
            headers = {"Nats-Msg-Id": ev.event_id}
            if _header_hook is not None:
                _header_hook(headers, ev)
            futures.append(
                await js.publish_async(
                    ev.subject,
                    encode(ev),
                    headers=headers,
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


class Publisher(Protocol):
    """What a handler that publishes as it goes (a generator streaming a batch's prompts) is given."""

    async def publish(self, events: Sequence[Event]) -> None: ...


class JetStreamPublisher:
    """Publishes to the events stream over the service's connection (looked up at each call: the
    connection exists only once the app has started)."""

    def __init__(self, js: Callable[[], "JetStreamContext"]) -> None:
        self._js = js

    @property
    def js(self) -> "JetStreamContext":
        return self._js()

    async def publish(self, events: Sequence[Event]) -> None:
        await publish_events(self._js(), events)
        if (m := metrics.active()) is not None:
            m.published_events(events)
