"""Chat-runner service: `faststream run --factory services.chat_runner.app:create_app`."""

from faststream import FastStream

from contracts.events import PromptQueued
from contracts.topology import CHAT_RUNNER_QUEUED
from services.chat_runner.logic import run_prompt
from services.runtime.endpoints import Endpoints
from services.runtime.model_service import model_calling_app
from services.runtime.settings import get_settings

SERVICE = "chat-runner"


def create_app() -> FastStream:
    settings = get_settings()
    endpoints = Endpoints.from_settings(settings)
    return model_calling_app(
        SERVICE,
        CHAT_RUNNER_QUEUED,
        PromptQueued,
        settings,
        lambda client, evt, cancelled: run_prompt(client, evt, endpoints, cancelled),
    )
