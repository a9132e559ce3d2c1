"""The scorer's handler: judged answers scored together, so that SQL checks overlap (each
reference database has its own limit)."""

import asyncio
import logging
from collections.abc import Sequence

from contracts.enums import FailureCategory, Stage
from contracts.events import PromptFailed, PromptJudged, PromptScored
from services.scorer.logic import ReferenceDatabases, score_prompt

log = logging.getLogger("evalbus.scorer")


def failed_scoring(evt: PromptJudged, exc: Exception) -> PromptFailed:
    return PromptFailed.of(
        evt, Stage.SCORE, FailureCategory.INVALID_INPUT, f"the scorer could not score this answer: {type(exc).__name__}"
    )


async def score_one(
    evt: PromptJudged, databases: ReferenceDatabases, pattern_timeout_s: float
) -> PromptScored | PromptFailed:
    try:
        sql = databases.for_batch(evt.batch_id, evt.config.sql_concurrency)
        return await score_prompt(evt, sql, pattern_timeout_s=pattern_timeout_s)
    except Exception as exc:
        # Checks never raise (each failure is a component verdict); anything else is this event's
        # alone: it fails its prompt with the reason instead of the whole fetch.
        log.exception("cannot score %s", evt.prompt_id)
        return failed_scoring(evt, exc)


async def on_prompts_judged(
    events: list[PromptJudged], databases: ReferenceDatabases, pattern_timeout_s: float
) -> Sequence[PromptScored | PromptFailed]:
    return await asyncio.gather(*(score_one(e, databases, pattern_timeout_s) for e in events))
