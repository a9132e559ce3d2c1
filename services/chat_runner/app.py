"""Chat-runner service: `faststream run --factory services.chat_runner.app:create_app`."""

from faststream import FastStream

from contracts.topology import CHAT_RUNNER_QUEUED
from services.chat_runner.handlers import on_prompt_queued
from services.runtime.messaging.cancels import CancelledBatches
from services.runtime.messaging.service import Service
from services.runtime.models.endpoints import Endpoints
from services.runtime.models.wiring import chat_client
from services.runtime.settings import get_settings

SERVICE = "chat-runner"


def create_app() -> FastStream:
    settings = get_settings()
    service = Service(SERVICE, settings)
    model = chat_client(settings, service.broker, SERVICE)
    cancelled = CancelledBatches()
    service.provide(model=model, endpoints=Endpoints.from_settings(settings), cancelled=cancelled)
    service.background(lambda: cancelled.watch(service.js))
    service.on_stopped(model.aclose)
    service.consumer(CHAT_RUNNER_QUEUED, slots=settings.worker_slots)(on_prompt_queued)
    return service.app
