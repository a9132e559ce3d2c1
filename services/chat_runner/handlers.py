"""The chat-runner's handler: one queued prompt through the model under test."""

from collections.abc import Container

from contracts.events import PromptFailed, PromptQueued, PromptResponded
from services.chat_runner.logic import run_prompt
from services.runtime.models.client import ChatModel
from services.runtime.models.endpoints import Endpoints


async def on_prompt_queued(
    evt: PromptQueued, model: ChatModel, endpoints: Endpoints, cancelled: Container[str]
) -> PromptResponded | PromptFailed:
    return await run_prompt(model, evt, endpoints, cancelled)
