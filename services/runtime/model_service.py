"""The shape shared by the services that call a model (chat-runner, judge): one event in, one
model call under the shared client, cancellation and keep-alives, one event out."""

from collections.abc import Awaitable, Callable
from typing import TypeVar

from faststream import FastStream
from nats.aio.msg import Msg
from pydantic import BaseModel

from contracts.events import Event
from contracts.topology import ConsumerSpec
from services.runtime.bus import InProgress, jetstream
from services.runtime.cancels import CancelledBatches
from services.runtime.llm import ChatClient
from services.runtime.model_client import chat_client
from services.runtime.service import consume, new_service, run_in_background
from services.runtime.settings import Settings
from services.runtime.worker import work_one

In = TypeVar("In", bound=BaseModel)
Work = Callable[[ChatClient, In, CancelledBatches], Awaitable[Event]]


def model_calling_app(
    service: str, spec: ConsumerSpec, event_type: type[In], settings: Settings, work: Work[In]
) -> FastStream:
    broker, app = new_service(service, settings)
    client = chat_client(settings, broker, service)
    app.after_shutdown(client.aclose)
    cancelled = CancelledBatches()
    run_in_background(app, lambda: cancelled.watch(jetstream(broker)))

    async def handle(evt: In) -> Event:
        return await work(client, evt, cancelled)

    async def on_message(raw: Msg) -> None:
        await work_one(jetstream(broker), service, raw, event_type, handle, alive)

    binding = consume(app, broker, service, spec, on_message=on_message, slots=settings.worker_slots, batch_size=64)
    alive = InProgress(lambda: binding.keepalive_s)
    app.after_shutdown(alive.aclose)
    return app
