"""Scorer service: `faststream run --factory services.scorer.app:create_app`."""

import asyncio
import logging
from collections.abc import Sequence

from faststream import FastStream
from nats.aio.msg import Msg

from contracts.enums import FailureCategory, Stage
from contracts.events import Event, PromptFailed, PromptJudged
from contracts.topology import SCORER_JUDGED
from services.runtime.bus import InProgress, jetstream
from services.runtime.service import consume, new_service
from services.runtime.settings import get_settings
from services.runtime.worker import work_batch
from services.scorer.logic import ReferenceDatabases, score_prompt

SERVICE = "scorer"
log = logging.getLogger("evalbus.scorer")


def _parse(raw: Msg) -> PromptJudged:
    return PromptJudged.model_validate_json(raw.data)


def failed_scoring(evt: PromptJudged, exc: Exception) -> PromptFailed:
    return PromptFailed.of(
        evt, Stage.SCORE, FailureCategory.INVALID_INPUT, f"the scorer could not score this answer: {type(exc).__name__}"
    )


def create_app() -> FastStream:
    settings = get_settings()
    broker, app = new_service(SERVICE, settings)
    databases = ReferenceDatabases(
        {name: url.get_secret_value() for name, url in settings.reference_databases.items()},
        settings.sql_check_concurrency,
    )

    async def score_one(evt: PromptJudged) -> Event:
        try:
            return await score_prompt(evt, databases.check, pattern_timeout_s=settings.pattern_timeout_s)
        except Exception as exc:
            # Checks never raise (each failure is a component verdict); anything else is this
            # event's alone: it fails its prompt with the reason instead of the whole fetch.
            log.exception("cannot score %s", evt.prompt_id)
            return failed_scoring(evt, exc)

    async def score(events: list[PromptJudged]) -> Sequence[Event]:
        # Concurrently, so that SQL checks of one batch overlap (each database has its own limit).
        return await asyncio.gather(*(score_one(e) for e in events))

    async def on_prompts_judged(raws: list[Msg]) -> None:
        # Kept alive: a batch of SQL checks may outlast the ack wait.
        await work_batch(jetstream(broker), SERVICE, raws, _parse, score, alive)

    binding = consume(
        app,
        broker,
        SERVICE,
        SCORER_JUDGED,
        on_batch=on_prompts_judged,
        batch_size=settings.fetch_batch,
        max_wait_s=settings.fetch_timeout_s,
    )
    alive = InProgress(lambda: binding.keepalive_s)
    app.after_shutdown(alive.aclose)
    return app
