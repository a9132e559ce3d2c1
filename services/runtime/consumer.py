"""Pull consumers bound to the durables infra created, run inside a FastStream app's lifecycle.

Why not FastStream's own pull subscribers: in FastStream 0.7.8 their fetch loop catches
`nats.errors.TimeoutError`, but nats-py 2.16's `fetch` raises a plain `asyncio.TimeoutError` when
idle, so the loop dies and is restarted, and the batch subscriber drops what it had fetched so
far (redelivered only after ack_wait). Their per-message middleware and DI layers also cost
~300 µs a message. This loop is small, and what it does with a message is the caller's.

Two modes: `per_message` keeps up to `slots` messages in flight at once (model calls: a slow call
never holds up the others); `batched` hands whole fetches to one call (bulk database writes).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, ConnectionReconnectingError, NoRespondersError
from nats.js import JetStreamContext
from nats.js.errors import APIError, ServiceUnavailableError

from contracts.topology import ConsumerSpec

log = logging.getLogger("evalbus.consumer")

MsgHandler = Callable[[Msg], Awaitable[None]]
BatchHandler = Callable[[list[Msg]], Awaitable[None]]
_RETRYABLE = (
    ConnectionClosedError,
    ConnectionReconnectingError,
    NoRespondersError,
    ServiceUnavailableError,
    APIError,
    OSError,
)


class Consumer:
    def __init__(
        self,
        nc: Client,
        spec: ConsumerSpec,
        *,
        on_message: MsgHandler | None = None,
        on_batch: BatchHandler | None = None,
        slots: int = 1,
        batch_size: int = 256,
        max_wait_s: float = 1.0,
        inbox_prefix: str | None = None,
    ) -> None:
        if (on_message is None) == (on_batch is None):
            raise ValueError("give exactly one of on_message or on_batch")
        self._nc = nc
        self._spec = spec
        self._on_message = on_message
        self._on_batch = on_batch
        self._slots = asyncio.Semaphore(slots)
        self._slot_count = slots
        self._batch_size = batch_size
        self._max_wait_s = max_wait_s
        self._inbox_prefix = inbox_prefix
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._running = False
        self.ack_wait_s = spec.ack_wait_s
        self.handled = 0
        self.last_active = time.monotonic()

    async def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._run(), name=f"consume-{self._spec.durable}")

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop fetching, let in-flight work finish (its messages are acked), then return."""
        self._running = False
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace_s)
            for task in pending:  # unacked: JetStream redelivers them after ack_wait
                task.cancel()
        if self._sub is not None:
            # An open pull request would otherwise hold a connection drain for its whole timeout.
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _bind(self) -> JetStreamContext.PullSubscription:
        js = self._nc.jetstream()
        kwargs = {"inbox_prefix": self._inbox_prefix.encode()} if self._inbox_prefix else {}
        sub = await js.pull_subscribe_bind(durable=self._spec.durable, stream=self._spec.stream, **kwargs)
        # The server's ack wait is the truth (infra may have set another than the spec's).
        info = await sub.consumer_info()
        if info.config.ack_wait:
            self.ack_wait_s = float(info.config.ack_wait)
        return sub

    async def _run(self) -> None:
        while self._running:
            try:
                if self._sub is None:
                    self._sub = await self._bind()
                sub = self._sub
                if self._on_batch is not None:
                    await self._fetch_batch(sub)
                else:
                    await self._fetch_some(sub)
            except TimeoutError:  # nothing to do (nats-py raises asyncio's, not its own)
                continue
            except asyncio.CancelledError:
                raise
            except _RETRYABLE as exc:
                log.warning("consumer %s: %r; retrying", self._spec.durable, exc)
                await asyncio.sleep(1)
            except Exception:
                log.exception("consumer %s failed; retrying", self._spec.durable)
                await asyncio.sleep(1)

    def status(self) -> dict[str, object]:
        """For the service's status endpoint: alive, busy or quiet, and how much it did."""
        alive = self._task is not None and not self._task.done()
        return {
            "durable": self._spec.durable,
            "alive": alive,
            "bound": self._sub is not None,
            "in_flight": len(self._inflight),
            "handled": self.handled,
            "idle_s": round(time.monotonic() - self.last_active, 1),
            "ack_wait_s": self.ack_wait_s,
        }

    @property
    def healthy(self) -> bool:
        # The loop runs and either fetches (it returns at least every max_wait) or is working.
        quiet_for = time.monotonic() - self.last_active
        return bool(self._task and not self._task.done()) and (quiet_for < 60 or bool(self._inflight))

    async def _fetch_batch(self, sub: JetStreamContext.PullSubscription) -> None:
        assert self._on_batch is not None
        try:
            msgs = await sub.fetch(self._batch_size, timeout=self._max_wait_s)
        finally:
            self.last_active = time.monotonic()
        if msgs:
            await self._on_batch(msgs)
            self.handled += len(msgs)
            self.last_active = time.monotonic()

    async def _fetch_some(self, sub: JetStreamContext.PullSubscription) -> None:
        assert self._on_message is not None
        await self._slots.acquire()
        free = 1
        # Take every free slot, so one fetch fills them all.
        while free < min(self._batch_size, self._slot_count) and not self._slots.locked():
            await self._slots.acquire()
            free += 1
        try:
            msgs = await sub.fetch(free, timeout=self._max_wait_s)
        except BaseException:
            for _ in range(free):
                self._slots.release()
            raise
        finally:
            self.last_active = time.monotonic()
        for _ in range(free - len(msgs)):
            self._slots.release()
        for msg in msgs:
            task = asyncio.create_task(self._one(msg))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _one(self, msg: Msg) -> None:
        assert self._on_message is not None
        try:
            await self._on_message(msg)
        except Exception:
            log.exception("handler for %s raised; the message will be redelivered", msg.subject)
        finally:
            self.handled += 1
            self.last_active = time.monotonic()
            self._slots.release()
