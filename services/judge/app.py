"""Judge service: `faststream run --factory services.judge.app:create_app`."""

from faststream import FastStream

from contracts.events import Event, PromptResponded
from contracts.topology import JUDGE_RESPONDED
from services.judge.batcher import JudgeBatcher
from services.runtime.cancels import CancelledBatches
from services.runtime.endpoints import Endpoints
from services.runtime.llm import ChatClient
from services.runtime.model_service import model_calling_app
from services.runtime.settings import get_settings

SERVICE = "judge"


class _Judge:
    """The per-message work: hands each answer to one batcher, built on first use with the client
    and the cancel set the model service made."""

    def __init__(self, endpoints: Endpoints, linger_s: float) -> None:
        self._endpoints = endpoints
        self._linger_s = linger_s
        self._batcher: JudgeBatcher | None = None

    async def __call__(self, client: ChatClient, evt: PromptResponded, cancelled: CancelledBatches) -> Event:
        if self._batcher is None:
            self._batcher = JudgeBatcher(client, self._endpoints, linger_s=self._linger_s, cancelled=cancelled)
        return await self._batcher.judge(evt)


def create_app() -> FastStream:
    settings = get_settings()
    work = _Judge(Endpoints.from_settings(settings), settings.judge_linger_ms / 1000)
    return model_calling_app(SERVICE, JUDGE_RESPONDED, PromptResponded, settings, work)
