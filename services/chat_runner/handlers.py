"""The chat-runner's handler: one queued prompt through the model under test, and the bill of
the call it made."""

from collections.abc import Container

from contracts.base import Event
from contracts.events import PromptQueued
from services.chat_runner.logic import run_prompt
from services.runtime.models.client import ChatModel
from services.runtime.models.endpoints import Endpoints
from services.runtime.models.ledger import Meter


async def on_prompt_queued(
    evt: PromptQueued, model: ChatModel, endpoints: Endpoints, cancelled: Container[str]
) -> list[Event]:
    """The prompt's responded or failed event first, then its `call.billed` (none without a call)."""
    meter = Meter(model)
    outcome = await run_prompt(meter, evt, endpoints, cancelled)
    return [outcome, *meter.billed(evt.config)]
