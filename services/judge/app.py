"""Judge service: `faststream run --factory services.judge.app:create_app`."""

from faststream import FastStream

from contracts.events import PromptResponded
from contracts.topology import JUDGE_RESPONDED
from services.judge.logic import judge_prompt
from services.runtime.model_service import model_calling_app
from services.runtime.settings import get_settings

SERVICE = "judge"


def create_app() -> FastStream:
    settings = get_settings()
    default_base_url = settings.judge_base_url or settings.model_base_url
    return model_calling_app(
        SERVICE,
        JUDGE_RESPONDED,
        PromptResponded,
        settings,
        lambda client, evt, cancelled: judge_prompt(client, evt, default_base_url, cancelled),
    )
