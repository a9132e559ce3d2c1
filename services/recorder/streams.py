"""What the recorder reads from JetStream besides its consumers' messages: the original message
behind an advisory, and how far its breaker consumer lags."""

import asyncio
import logging
import time

from nats.js.errors import NotFoundError

from contracts import subjects
from contracts.topology import RECORDER_BREAKERS
from services.runtime.messaging.handling import Incoming
from services.runtime.messaging.publishing import JetStreamPublisher

log = logging.getLogger("evalbus.recorder")
BREAKERS_SETTLE_S = 2.0


class StreamOriginals:
    """Messages of the events stream by sequence (over the service's connection)."""

    def __init__(self, publisher: JetStreamPublisher) -> None:
        self._publisher = publisher

    async def read(self, stream_seq: int) -> Incoming | None:
        """The message at `stream_seq`, None once it has aged out of the stream; raises when the
        broker cannot say now."""
        try:
            original = await self._publisher.js.get_msg(subjects.STREAM_EVENTS, stream_seq)
        except NotFoundError:
            return None
        return Incoming(original.subject or "", original.data or b"", stream_seq)


class BreakerLag:
    """Breaker events travel on their own stream: `settled()` lets those already published reach
    the rows a final report counts (they are few; at most a short wait if that consumer is behind)."""

    def __init__(self, publisher: JetStreamPublisher, settle_s: float = BREAKERS_SETTLE_S) -> None:
        self._publisher = publisher
        self._settle_s = settle_s

    async def settled(self) -> None:
        deadline = time.monotonic() + self._settle_s
        while time.monotonic() < deadline:
            try:
                info = await self._publisher.js.consumer_info(RECORDER_BREAKERS.stream, RECORDER_BREAKERS.durable)
            except Exception as exc:
                log.warning("could not look at the breaker consumer: %r", exc)
                return
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.02)
