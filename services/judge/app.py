"""Judge service: `faststream run --factory services.judge.app:create_app`."""

from faststream import FastStream

from contracts.topology import JUDGE_RESPONDED
from services.judge.batcher import JudgeBatcher
from services.judge.handlers import on_prompt_responded
from services.runtime.messaging.cancels import CancelledBatches
from services.runtime.messaging.service import Service
from services.runtime.models.endpoints import Endpoints
from services.runtime.models.wiring import chat_client
from services.runtime.settings import get_settings

SERVICE = "judge"


def create_app() -> FastStream:
    settings = get_settings()
    service = Service(SERVICE, settings)
    model = chat_client(settings, service.broker, SERVICE)
    cancelled = CancelledBatches()
    linger_s = settings.judge_linger_ms / 1000
    service.provide(
        batcher=JudgeBatcher(model, Endpoints.from_settings(settings), linger_s=linger_s, cancelled=cancelled)
    )
    service.background(lambda: cancelled.watch(service.js))
    service.on_stopped(model.aclose)
    service.consumer(JUDGE_RESPONDED, slots=settings.worker_slots)(on_prompt_responded)
    return service.app
