"""The judge's handler: each answer goes to the batcher, which grades answers of one batch and
config together, a chunk per judge call; the bills of those calls go out with the answer's event."""

from contracts.base import Event
from contracts.events import PromptResponded
from services.judge.batcher import JudgeBatcher


async def on_prompt_responded(evt: PromptResponded, batcher: JudgeBatcher) -> list[Event]:
    """The answer's judged or failed event first, then the `call.billed` of each call that graded it."""
    result, bills = await batcher.judge_billed(evt)
    return [result, *bills]
