"""Chat-runner service: `faststream run --factory services.chat_runner.app:create_app`."""

from faststream import FastStream

from contracts.topology import CHAT_RUNNER_QUEUED
from services.chat_runner.handlers import on_prompt_queued
from services.runtime.messaging.service import Service
from services.runtime.models.wiring import model_calling
from services.runtime.settings import get_settings

SERVICE = "chat-runner"


def create_app() -> FastStream:
    settings = get_settings()
    service = Service(SERVICE, settings)
    calling = model_calling(service)
    service.provide(model=calling.model, endpoints=calling.endpoints, cancelled=calling.cancelled)
    service.consumer(CHAT_RUNNER_QUEUED, slots=settings.worker_slots)(on_prompt_queued)
    return service.app
