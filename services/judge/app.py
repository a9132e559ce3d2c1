"""Judge service: `faststream run --factory services.judge.app:create_app`."""

from faststream import FastStream

from contracts.topology import JUDGE_RESPONDED
from services.judge.batcher import JudgeBatcher
from services.judge.handlers import on_prompt_responded
from services.runtime.messaging.service import Service
from services.runtime.models.wiring import model_calling
from services.runtime.settings import get_settings

SERVICE = "judge"


def create_app() -> FastStream:
    settings = get_settings()
    service = Service(SERVICE, settings)
    calling = model_calling(service)
    linger_s = settings.judge_linger_ms / 1000
    batcher = JudgeBatcher(calling.model, calling.endpoints, linger_s=linger_s, cancelled=calling.cancelled)
    service.provide(batcher=batcher)
    service.consumer(JUDGE_RESPONDED, slots=settings.worker_slots)(on_prompt_responded)
    return service.app
