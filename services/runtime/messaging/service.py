"""A service's declarations: its consumers and their handlers, the dependencies handlers are
given, and background jobs, run inside a FastStream app.

What FastStream does here: the app's lifecycle (startup and shutdown hooks, signals),
`faststream run --factory services.<name>.app:create_app`, and the NATS connection (its broker,
reconnects, and the JetStream context). What it does not: consuming. Each consumer is our own
JetStream pull loop (`consumer.py` says why), and handlers are called by `handling.py`, not by
FastStream's subscriber, middleware or dependency injection.

    service = Service("scorer", settings)
    service.provide(databases=ReferenceDatabases(...))
    service.batch_consumer(SCORER_JUDGED, batch_size=...)(score_judged)
    app = service.app

A handler is a top-level async function: its first parameter is what it handles (an event, or
`list[Event]` for a batch consumer; its annotation picks the parser), every other parameter is a
dependency given by name (`publisher` is always there). Dependencies are bound with
`functools.partial` once the app has started, so a message passes through the consumer loop and
`handling` and then the handler: two runtime frames.
"""

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import typing
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from faststream import FastStream
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel

from contracts.topology import ConsumerSpec
from services.runtime.malloc import trim_heap_forever
from services.runtime.messaging.connection import inbox_prefix, jetstream, make_broker, mark_stopping
from services.runtime.messaging.consumer import Consumer
from services.runtime.messaging.handling import (
    Invalid,
    Parse,
    Policy,
    Screen,
    Unexpected,
    handle_batch,
    handle_one,
    never_transient,
    typed,
)
from services.runtime.messaging.health import Health
from services.runtime.messaging.keepalive import InProgress
from services.runtime.messaging.publishing import JetStreamPublisher
from services.runtime.observability import metrics
from services.runtime.settings import Settings

if TYPE_CHECKING:
    from services.runtime.observability.tracing import Tracing

H = TypeVar("H", bound=Callable[..., Awaitable[Any]])
Factory = Callable[[], Awaitable[object]]
# A per-message consumer asks for at most this many messages at once (it has room for `slots`).
PULL_AT_MOST = 64


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # FastStream logs bookkeeping at INFO; that costs CPU and says little.
    logging.getLogger("faststream").setLevel(logging.WARNING)
    logging.getLogger("evalbus").setLevel(level.upper())


@dataclass
class _Declared:
    spec: ConsumerSpec
    handler: Callable[..., Awaitable[Any]]
    parse: Parse[Any]
    batched: bool
    slots: int
    batch_size: int
    max_wait_s: float
    invalid: Invalid
    transient: Callable[[BaseException], bool]
    unexpected: Unexpected
    screen: Callable[..., Awaitable[Any]] | None


def _handled_type(handler: Callable[..., object], batched: bool) -> type[BaseModel] | None:
    """The model a handler's first parameter is annotated with (`list[Model]` for a batch)."""
    params = list(inspect.signature(handler).parameters)
    if not params:
        raise TypeError(f"handler {handler.__qualname__} takes no message")
    hint = typing.get_type_hints(handler).get(params[0])
    if batched and typing.get_origin(hint) is list:
        hint = typing.get_args(hint)[0]
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def _dependencies(fn: Callable[..., object]) -> list[str]:
    return list(inspect.signature(fn).parameters)[1:]


class Service:
    def __init__(self, name: str, settings: Settings) -> None:
        configure_logging(settings.log_level)
        self.name = name
        self.settings = settings
        self.log = logging.getLogger(f"evalbus.{name}")
        self.broker = make_broker(name, settings.require_nats_url(), *settings.nats_credentials())
        logging.getLogger(f"evalbus.{name}.broker").setLevel(logging.WARNING)
        self.app = FastStream(self.broker, logger=self.log)
        self.publisher = JetStreamPublisher(lambda: jetstream(self.broker))
        self.health = Health(name, lambda: self.broker.connection)
        self._deps: dict[str, object] = {"publisher": self.publisher}
        self._factories: dict[str, Factory] = {}
        self._declared: list[_Declared] = []
        self._started: list[Callable[[], Awaitable[None]]] = []
        self._stopped: list[Callable[[], Awaitable[None]]] = []
        self._jobs: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._consumers: list[Consumer] = []
        self._alive: list[InProgress] = []
        self.app.on_shutdown(mark_stopping)
        self.app.after_startup(self._start)
        self.app.on_shutdown(self._stop)
        self.app.after_shutdown(self._close)
        self.background(lambda: self.health.beat_forever(settings.heartbeat_dir))
        self.background(trim_heap_forever)
        self._observe()

    def _observe(self) -> None:
        """Metrics and tracing, when the settings turn them on (before the app builds its model
        client, which looks them up)."""
        self.metrics: metrics.Metrics | None = None
        self._metrics_server: metrics.MetricsServer | None = None
        if self.settings.metrics_port:
            self.metrics = metrics.enable()
            self._metrics_server = metrics.MetricsServer(
                self.metrics, self.settings.metrics_port, self.settings.metrics_host
            )
            watched = self.metrics

            async def watch_lag() -> None:
                specs = [d.spec for d in self._declared]
                await metrics.watch_lag_forever(watched, lambda: self.js, specs)

            self.background(watch_lag)
        self.tracing: Tracing | None = None
        if self.settings.tracing != "off":
            from services.runtime.observability import tracing  # imports OpenTelemetry: only when on

            self.tracing = tracing.enable(self.name, tracing.provider_for(self.name, self.settings.tracing))
            self.on_stopped(self._stop_tracing)

    async def _stop_tracing(self) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()  # exports what is left

    @property
    def js(self) -> JetStreamContext:
        return jetstream(self.broker)

    # ---- declarations --------------------------------------------------------------------------

    def provide(self, **deps: object) -> None:
        """Dependencies handlers ask for by parameter name."""
        self._deps.update(deps)

    def provide_started(self, **factories: Factory) -> None:
        """Dependencies built once the connection is up (in the order given), before any consumer."""
        self._factories.update(factories)

    def on_started(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run once dependencies exist, before the consumers start (e.g. serve an API)."""
        self._started.append(hook)

    def on_stopped(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run after the consumers have drained (close a pool, an engine)."""
        self._stopped.append(hook)

    def background(self, job: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """A task that lives while the service runs (started after the consumers)."""
        self._jobs.append(job)

    def consumer(
        self,
        spec: ConsumerSpec,
        *,
        slots: int = 1,
        parse: Parse[Any] | None = None,
        invalid: Invalid = Invalid.DEAD_LETTER,
        transient: Callable[[BaseException], bool] = never_transient,
        unexpected: Unexpected = Unexpected.RETRY,
    ) -> Callable[[H], H]:
        """Declare `handler(event, **deps) -> Event | list[Event] | None` on `spec`'s durable, with
        up to `slots` messages worked on at once (a slow call never holds up the others)."""

        def register(handler: H) -> H:
            self._declare(handler, spec, False, parse, slots, PULL_AT_MOST, 1.0, invalid, transient, unexpected, None)
            return handler

        return register

    def batch_consumer(
        self,
        spec: ConsumerSpec,
        *,
        batch_size: int = 256,
        max_wait_s: float = 1.0,
        parse: Parse[Any] | None = None,
        screen: Callable[..., Awaitable[Any]] | None = None,
        invalid: Invalid = Invalid.DEAD_LETTER,
        transient: Callable[[BaseException], bool] = never_transient,
    ) -> Callable[[H], H]:
        """Declare `handler(events: list[Event], **deps) -> list[Event] | None` on `spec`'s durable:
        called with what gathered (up to `batch_size`, at most `max_wait_s` after the first).
        `screen(events, **deps) -> list[Refusal | None]` may refuse some before the handler runs."""

        def register(handler: H) -> H:
            self._declare(
                handler, spec, True, parse, 1, batch_size, max_wait_s, invalid, transient, Unexpected.RETRY, screen
            )
            return handler

        return register

    def _declare(
        self,
        handler: Callable[..., Awaitable[Any]],
        spec: ConsumerSpec,
        batched: bool,
        parse: Parse[Any] | None,
        slots: int,
        batch_size: int,
        max_wait_s: float,
        invalid: Invalid,
        transient: Callable[[BaseException], bool],
        unexpected: Unexpected,
        screen: Callable[..., Awaitable[Any]] | None,
    ) -> None:
        if parse is None:
            model = _handled_type(handler, batched)
            if model is None:
                raise TypeError(f"{handler.__qualname__}: annotate what it handles, or give parse=")
            parse = typed(model)
        self._declared.append(
            _Declared(
                spec, handler, parse, batched, slots, batch_size, max_wait_s, invalid, transient, unexpected, screen
            )
        )

    # ---- running -------------------------------------------------------------------------------

    def _bind(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        missing = [name for name in _dependencies(fn) if name not in self._deps]
        if missing:
            raise TypeError(f"{fn.__qualname__} asks for {missing}, which {self.name} does not provide")
        return functools.partial(fn, **{name: self._deps[name] for name in _dependencies(fn)})

    async def _start(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.start()
        await self.health.serve()
        await dump_tasks_on_sigusr1()
        for name, factory in self._factories.items():
            self._deps[name] = await factory()
        for hook in self._started:
            await hook()
        for declared in self._declared:
            await self._start_consumer(declared)
        self._tasks = [asyncio.create_task(job()) for job in self._jobs]

    async def _start_consumer(self, d: _Declared) -> None:
        holder: list[Consumer] = []
        alive = InProgress(lambda: max(0.5, (holder[0].ack_wait_s if holder else d.spec.ack_wait_s) / 3))
        self._alive.append(alive)
        policy = Policy(
            self.name,
            d.parse,
            self.publisher,
            alive,
            d.invalid,
            d.transient,
            d.unexpected,
            metrics=self.metrics.consumer(d.spec.durable) if self.metrics is not None else None,
            tracer=self.tracing,
            durable=d.spec.durable,
        )
        work = self._bind(d.handler)
        on_message: Callable[[Msg], Awaitable[None]] | None = None
        on_batch: Callable[[list[Msg]], Awaitable[None]] | None = None
        if d.batched:
            screen: Screen[Any] | None = self._bind(d.screen) if d.screen is not None else None
            on_batch = functools.partial(handle_batch, policy, work=work, screen=screen)
        else:
            on_message = functools.partial(handle_one, policy, work=work)
        consumer = Consumer(
            self.broker.connection,
            d.spec,
            on_message=on_message,
            on_batch=on_batch,
            slots=d.slots,
            batch_size=d.batch_size,
            max_wait_s=d.max_wait_s,
            inbox_prefix=inbox_prefix(self.name),
        )
        await consumer.start()
        holder.append(consumer)
        self._consumers.append(consumer)
        self.health.consumers.append(consumer)

    async def _stop(self) -> None:
        """In-flight work drains (its messages are acked), then background tasks end."""
        for consumer in self._consumers:
            await consumer.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _close(self) -> None:
        for alive in self._alive:
            await alive.aclose()
        for hook in self._stopped:
            await hook()
        if self._metrics_server is not None:
            self._metrics_server.stop()


async def dump_tasks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` logs where every task of the service waits (a stall's first question)."""
    loop = asyncio.get_running_loop()

    def dump() -> None:
        tasks = asyncio.all_tasks(loop)
        lines = [f"{len(tasks)} tasks:"]
        for task in tasks:
            lines.append(f"- {task.get_name()}: " + " <- ".join(_awaiting(task.get_coro())))
        logging.getLogger("evalbus.tasks").warning("\n".join(lines))

    with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGUSR1, dump)


def _awaiting(coro: object) -> list[str]:
    """The chain of coroutines a task is suspended in, outermost first."""
    chain: list[str] = []
    while coro is not None and len(chain) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            chain.append(f"{frame.f_code.co_name}@{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return chain
