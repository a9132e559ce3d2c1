"""The judge's handler: each answer goes to the batcher, which grades answers of one batch and
config together, a chunk per judge call."""

from contracts.events import PromptFailed, PromptJudged, PromptResponded
from services.judge.batcher import JudgeBatcher


async def on_prompt_responded(evt: PromptResponded, batcher: JudgeBatcher) -> PromptJudged | PromptFailed:
    return await batcher.judge(evt)
