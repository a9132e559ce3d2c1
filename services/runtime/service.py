"""Building a service's FastStream app: logging, the broker, and consumers bound to durables."""

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from faststream import FastStream
from faststream.nats import NatsBroker

from contracts.topology import ConsumerSpec
from services.runtime.bus import inbox_prefix, make_broker, mark_stopping
from services.runtime.consumer import BatchHandler, Consumer, MsgHandler
from services.runtime.health import Health
from services.runtime.malloc import trim_heap_forever
from services.runtime.settings import Settings

HEALTH_KEY = "evalbus_health"


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # FastStream logs bookkeeping at INFO; that costs CPU and says little.
    logging.getLogger("faststream").setLevel(logging.WARNING)
    logging.getLogger("evalbus").setLevel(level.upper())


def new_service(service: str, settings: Settings) -> tuple[NatsBroker, FastStream]:
    configure_logging(settings.log_level)
    broker = make_broker(service, settings.require_nats_url(), *settings.nats_credentials())
    logging.getLogger(f"evalbus.{service}.broker").setLevel(logging.WARNING)
    app = FastStream(broker, logger=logging.getLogger(f"evalbus.{service}"))
    app.on_shutdown(mark_stopping)
    health = Health(service, lambda: broker.connection)
    app.context.set_global(HEALTH_KEY, health)
    micro: list[object] = []

    async def serve_status() -> None:
        micro.append(await health.serve())

    app.after_startup(serve_status)
    app.after_startup(dump_tasks_on_sigusr1)
    run_in_background(app, lambda: health.beat_forever(settings.heartbeat_dir))
    run_in_background(app, trim_heap_forever)
    return broker, app


def consume(
    app: FastStream,
    broker: NatsBroker,
    service: str,
    spec: ConsumerSpec,
    *,
    on_message: MsgHandler | None = None,
    on_batch: BatchHandler | None = None,
    slots: int = 1,
    batch_size: int = 256,
    max_wait_s: float = 1.0,
) -> "Binding":
    """Run a consumer on `spec`'s durable while the app runs; on shutdown, in-flight work drains."""
    binding = Binding(spec.ack_wait_s)
    holder: list[Consumer] = []

    async def start() -> None:
        consumer = Consumer(
            broker.connection,
            spec,
            on_message=on_message,
            on_batch=on_batch,
            slots=slots,
            batch_size=batch_size,
            max_wait_s=max_wait_s,
            inbox_prefix=inbox_prefix(service),
        )
        await consumer.start()
        holder.append(consumer)
        app.context.get(HEALTH_KEY).consumers.append(consumer)
        binding.consumer = consumer

    async def stop() -> None:
        for consumer in holder:
            await consumer.stop()

    app.after_startup(start)
    app.on_shutdown(stop)
    return binding


class Binding:
    """What a handler may ask of its consumer: how often to signal in-progress work."""

    def __init__(self, default_ack_wait_s: float) -> None:
        self._default = default_ack_wait_s
        self.consumer: Consumer | None = None

    @property
    def keepalive_s(self) -> float:
        ack_wait = self.consumer.ack_wait_s if self.consumer else self._default
        return max(0.5, ack_wait / 3)


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


def run_in_background(app: FastStream, job: Callable[[], Awaitable[None]]) -> None:
    """A task that lives while the app runs (started once the broker is connected)."""
    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        tasks.append(asyncio.create_task(job()))

    async def stop() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.after_startup(start)
    app.on_shutdown(stop)
