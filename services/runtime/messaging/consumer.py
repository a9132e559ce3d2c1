"""Pull consumers bound to the durables infra created, run inside a FastStream app's lifecycle.

Not FastStream's own pull subscribers (their idle fetch loop dies on nats-py 2.16's timeout and
drops what it had fetched) and not nats-py's `fetch` (it returns as soon as anything has arrived,
reads nothing while a batch is handled, and gives every message its own timer): docs/decisions.md
has the measurements. This loop speaks JetStream's pull protocol itself: it keeps one pull request open
(`{"batch": n, "expires": ns}` to `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`, answered by up
to n messages, then a 408 status if it expires first) and takes each message the moment the
server pushes it; n is the room the caller has, so nothing is taken that cannot be worked on.

A request can vanish without an answer: with a server that restarted (its waiting requests are
in memory only), or with a connection that dropped. Nothing would then arrive for good, so each
request asks for idle heartbeats (a 100 status every PULL_HEARTBEAT_S while it waits) and one
that stays silent for a few heartbeats is given up and asked again; a reconnect gives up the
open request at once; and a watchdog that sees the server hold messages for this consumer while
nothing arrives rebinds (a new inbox subscription and a new request), and logs it.

Two modes: `on_message` starts a task per message, up to `slots` at once (model calls: a slow call
never holds up the others); `on_batch` hands what has gathered to one call once `batch_size` are
there, `max_wait_s` after the first, or when the flow pauses (bulk database writes), while the
next batch gathers.
"""

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, ConnectionReconnectingError, NoRespondersError
from nats.js import api
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
# An idle consumer renews its pull request this often (one small message per consumer).
PULL_EXPIRES_S = 5.0
# The server says an open request is still waiting this often (at most half the expiry).
PULL_HEARTBEAT_S = 1.0
# Nothing heard on the open request for this long, heartbeats included: it is gone; ask again.
PULL_SILENT_S = 4 * PULL_HEARTBEAT_S
# No end of the request by then: gone too, whatever was heard (a backstop for the heartbeats).
PULL_LOST_AFTER_S = PULL_EXPIRES_S + 2.0
# The watchdog looks this often; it asks the server once nothing has arrived for STALL_AFTER_S.
WATCH_EVERY_S = 5.0
STALL_AFTER_S = 10.0
# Statuses that only end a request; any other (409 consumer deleted or leadership change, 503 no
# responders) also makes the loop pause and check the consumer again.
_REQUEST_OVER = frozenset({api.StatusCode.NO_MESSAGES.value, api.StatusCode.REQUEST_TIMEOUT.value})
_HEARTBEAT = api.StatusCode.CONTROL_MESSAGE.value
# A partial batch also goes once nothing has arrived for this share of max_wait: the flow has
# paused (the end of a batch, a lull), so waiting longer would only add latency.
QUIET_SHARE = 0.25


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
        self._free = slots  # per-message mode: slots not taken by a message
        self._batch_size = batch_size
        # Ask for at least this many at a time while busy: a pull request per freed slot would
        # double the server's work for nothing (the slots are refilled a few at a time anyway).
        self._min_pull = max(1, min(slots if on_message else batch_size, batch_size) // 4)
        self._max_wait_s = max_wait_s
        self._inbox_prefix = inbox_prefix
        self._next_subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
        self._inbox = ""
        self._inbox_sub: Subscription | None = None
        # The open pull request: its reply token, what it may still deliver, when to give up on it.
        self._request = 0
        self._open = 0
        self._give_up_at = 0.0
        self._heard_at = 0.0  # the open request's last message or heartbeat
        self._reconnects = 0
        self._rebind = False  # set by the watchdog: the run loop binds afresh
        self._pause_until = 0.0
        self._wake = asyncio.Event()  # the pull loop may have room to ask for more
        self._buffer: list[Msg] = []  # batched mode: gathered, not yet handed over
        self._first_at = 0.0
        self._last_at = 0.0
        self._gathered = asyncio.Event()  # batched mode: a first message, or a full batch
        self._task: asyncio.Task[None] | None = None
        self._batch_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._handing_over = 0  # batched mode: messages in the batch handler right now
        self._inflight: set[asyncio.Task[None]] = set()
        self._running = False
        self.ack_wait_s = spec.ack_wait_s
        self.handled = 0
        self.last_active = time.monotonic()
        self.last_received = time.monotonic()
        self.lost_requests = 0  # pull requests given up on (silent, or open over a reconnect)
        self.rebinds = 0  # watchdog rebinds

    async def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._run(), name=f"consume-{self._spec.durable}")
        if self._on_batch is not None:
            self._batch_task = asyncio.create_task(self._run_batches(), name=f"batches-{self._spec.durable}")
        self._watch_task = asyncio.create_task(self._watch(), name=f"watch-{self._spec.durable}")

    async def stop(self, grace_s: float = 30.0) -> None:
        """Stop pulling, let work under way finish (its messages are acked), then return."""
        self._running = False
        for task in (self._watch_task, self._task):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._batch_task:
            self._gathered.set()  # the batch loop sees `_running` is off after its current batch
            _, pending = await asyncio.wait({self._batch_task}, timeout=grace_s)
            for task in pending:
                task.cancel()
        if self._inflight:
            _, pending = await asyncio.wait(self._inflight, timeout=grace_s)
            for task in pending:  # unacked: JetStream redelivers them after ack_wait
                task.cancel()
        if self._inbox_sub is not None:
            with contextlib.suppress(Exception):
                await self._inbox_sub.unsubscribe()
        await self._give_back(self._buffer)
        self._buffer = []

    # ---- pulling -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while self._running:
            try:
                if self._rebind:
                    self._rebind = False
                    await self._unbind()
                if self._inbox_sub is None:
                    await self._bind()
                await self._pull_when_room()
            except asyncio.CancelledError:
                raise
            except _RETRYABLE as exc:
                log.warning("consumer %s: %r; retrying", self._spec.durable, exc)
                await self._unbind()
                await asyncio.sleep(1)
            except Exception:
                log.exception("consumer %s failed; retrying", self._spec.durable)
                await self._unbind()
                await asyncio.sleep(1)

    async def _bind(self) -> None:
        # The server's ack wait is the truth (infra may have set another than the spec's); this
        # also fails, and is retried, while the durable does not exist.
        info = await self._nc.jetstream().consumer_info(self._spec.stream, self._spec.durable)
        if info.config.ack_wait:
            self.ack_wait_s = float(info.config.ack_wait)
        token = secrets.token_hex(8)
        self._inbox = f"{self._inbox_prefix}{token}" if self._inbox_prefix else f"_INBOX.{token}"
        # Each request replies to `<inbox>.<n>`, so a late status of an old request is told apart.
        self._inbox_sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_inbox)
        self._open = 0
        self._reconnects = self._nc.stats["reconnects"]
        self.last_received = time.monotonic()  # the watchdog's quiet time starts now

    async def _unbind(self) -> None:
        sub, self._inbox_sub = self._inbox_sub, None
        self._open = 0
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _pull_when_room(self) -> None:
        self._wake.clear()  # cleared before looking, so a wake-up after the look is not lost
        now = time.monotonic()
        if self._nc.stats["reconnects"] != self._reconnects:
            # A request open before a reconnect may have gone with the old connection or server.
            self._reconnects = self._nc.stats["reconnects"]
            self._lose_request("open over a reconnect")
        if self._open > 0:
            silent_s = now - self._heard_at
            if now < self._give_up_at and silent_s < PULL_SILENT_S:
                await self._sleep(min(self._give_up_at - now, PULL_SILENT_S - silent_s, 1.0))
                return
            self._lose_request(f"silent for {silent_s:.1f}s")
        room = self._room()
        if room < self._min_pull or now < self._pause_until:
            self._open = 0
            await self._sleep(max(self._pause_until - now, 0.0) or 1.0)
            return
        self._request += 1
        self._open = room
        self._give_up_at = now + PULL_LOST_AFTER_S
        self._heard_at = now
        heartbeat_s = min(PULL_HEARTBEAT_S, PULL_EXPIRES_S / 2)  # the server refuses more than half
        request = orjson.dumps(
            {"batch": room, "expires": int(PULL_EXPIRES_S * 1e9), "idle_heartbeat": int(heartbeat_s * 1e9)}
        )
        await self._nc.publish(self._next_subject, request, reply=f"{self._inbox}.{self._request}")
        self.last_active = now

    def _lose_request(self, why: str) -> None:
        # Its late messages, if any still come, are taken (and counted) like any others.
        if self._open > 0:
            self.lost_requests += 1
            log.info("consumer %s: pull request %d %s; asking again", self._spec.durable, self._request, why)
        self._open = 0

    async def _sleep(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()

    def _room(self) -> int:
        if self._on_message is not None:
            return min(self._free, self._batch_size)
        # Batched: one batch may gather while the previous one is being handled.
        return self._batch_size - len(self._buffer)

    async def _on_inbox(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is not None:
            self._on_status(msg, status)
            return
        if not self._running:
            await self._give_back([msg])
            return
        self.last_active = self.last_received = self._heard_at = time.monotonic()
        self._open -= 1
        if self._open <= 0:
            self._wake.set()
        if self._on_message is not None:
            self._free -= 1
            task = asyncio.create_task(self._one(msg))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            return
        self._buffer.append(msg)
        self._last_at = time.monotonic()
        if len(self._buffer) == 1:
            self._first_at = time.monotonic()
            self._gathered.set()
        elif len(self._buffer) >= self._batch_size:
            self._gathered.set()

    def _on_status(self, msg: Msg, status: str) -> None:
        if msg.subject.rpartition(".")[2] != str(self._request):
            return  # the late end (or heartbeat) of a request already given up on
        if status == _HEARTBEAT:
            self._heard_at = time.monotonic()  # the open request still waits on the server
            return
        self._open = 0
        self._wake.set()
        if status not in _REQUEST_OVER:
            description = msg.headers.get(api.Header.DESCRIPTION, "") if msg.headers else ""
            log.warning("consumer %s: pull answered %s %s; pausing", self._spec.durable, status, description)
            self._pause_until = time.monotonic() + 1.0

    # ---- handing over --------------------------------------------------------------------------

    async def _one(self, msg: Msg) -> None:
        assert self._on_message is not None
        try:
            await self._on_message(msg)
        except Exception:
            log.exception("handler for %s raised; the message will be redelivered", msg.subject)
        finally:
            self.handled += 1
            self.last_active = time.monotonic()
            self._free += 1
            if self._open <= 0 and self._free >= self._min_pull:
                self._wake.set()

    async def _run_batches(self) -> None:
        assert self._on_batch is not None
        while self._running:
            self._gathered.clear()
            if not self._buffer:
                await self._gathered.wait()
                continue
            if len(self._buffer) < self._batch_size:
                due = min(self._first_at + self._max_wait_s, self._last_at + self._max_wait_s * QUIET_SHARE)
                left_s = due - time.monotonic()
                if left_s > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(left_s):
                            await self._gathered.wait()
                    continue
            msgs, self._buffer = self._buffer[: self._batch_size], self._buffer[self._batch_size :]
            self._first_at = time.monotonic()
            self._wake.set()  # room again: the next batch gathers while this one is handled
            self._handing_over = len(msgs)
            try:
                await self._on_batch(msgs)
            except Exception:
                log.exception("batch handler for %s raised; its messages will be redelivered", self._spec.durable)
            finally:
                self._handing_over = 0
                self.handled += len(msgs)
                self.last_active = time.monotonic()

    async def _give_back(self, msgs: list[Msg]) -> None:
        """Messages taken but never worked on: redelivered now rather than after the ack wait."""
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak()

    # ---- watchdog --------------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Rebind a consumer the server holds messages for while nothing arrives: whatever lost
        the pull request (a restart, a dropped connection, a status not understood), a new inbox
        subscription and a new request recover it."""
        while self._running:
            await asyncio.sleep(WATCH_EVERY_S)
            try:
                await self._check_stalled()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server may be down right now: look again later
                log.debug("consumer %s: watchdog could not check: %r", self._spec.durable, exc)

    async def _check_stalled(self) -> None:
        quiet_s = time.monotonic() - self.last_received
        if quiet_s < STALL_AFTER_S or self._inbox_sub is None or self._rebind:
            return
        if self._room() < self._min_pull or time.monotonic() < self._pause_until:
            return  # busy: nothing is asked for, so nothing is expected
        info = await self._nc.jetstream().consumer_info(self._spec.stream, self._spec.durable, timeout=5)
        held = self._held()
        ack_pending = info.num_ack_pending or 0
        # Pending: never delivered, and a live request would have had it. Ack-pending beyond what
        # this process holds: delivered to a request that is gone (or held by a peer); the server
        # redelivers it after the ack wait, but only to a live request.
        if not info.num_pending and not (ack_pending > held and quiet_s >= self.ack_wait_s + STALL_AFTER_S):
            return
        if info.config.max_ack_pending and ack_pending >= info.config.max_ack_pending:
            return  # at its limit (peers hold it): nothing goes to anyone until acks come; no lost request
        log.warning(
            "consumer %s: the server holds %s pending and %s awaiting ack (%d here) but nothing arrived for %.0fs;"
            " rebinding",
            self._spec.durable,
            info.num_pending,
            ack_pending,
            held,
            quiet_s,
        )
        self.rebinds += 1
        self.last_received = time.monotonic()  # one rebind per quiet period
        self._rebind = True
        self._wake.set()

    def _held(self) -> int:
        return len(self._inflight) + len(self._buffer) + self._handing_over

    # ---- health ----------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """For the service's status endpoint: alive, busy or quiet, and how much it did."""
        alive = self._task is not None and not self._task.done()
        return {
            "durable": self._spec.durable,
            "alive": alive,
            "bound": self._inbox_sub is not None,
            "in_flight": len(self._inflight) + len(self._buffer),
            "handled": self.handled,
            "lost_requests": self.lost_requests,
            "rebinds": self.rebinds,
            "idle_s": round(time.monotonic() - self.last_active, 1),
            "ack_wait_s": self.ack_wait_s,
        }

    @property
    def healthy(self) -> bool:
        # The loop runs and either pulls (an idle one renews its request every PULL_EXPIRES_S) or works.
        quiet_for = time.monotonic() - self.last_active
        busy = bool(self._inflight) or bool(self._buffer)
        return bool(self._task and not self._task.done()) and (quiet_for < 60 or busy)
