"""Scorer service: `faststream run --factory services.scorer.app:create_app`."""

import asyncio
from collections.abc import Sequence

from faststream import FastStream
from nats.aio.msg import Msg

from contracts.events import Event, PromptJudged
from contracts.topology import SCORER_JUDGED
from services.runtime.bus import InProgress, jetstream
from services.runtime.service import consume, new_service
from services.runtime.settings import get_settings
from services.runtime.worker import work_batch
from services.scorer.logic import ReferenceDatabases, score_prompt

SERVICE = "scorer"


def _parse(raw: Msg) -> PromptJudged:
    return PromptJudged.model_validate_json(raw.data)


def create_app() -> FastStream:
    settings = get_settings()
    broker, app = new_service(SERVICE, settings)
    databases = ReferenceDatabases(
        {name: url.get_secret_value() for name, url in settings.reference_databases.items()},
        settings.sql_check_concurrency,
    )

    async def score(events: list[PromptJudged]) -> Sequence[Event]:
        # Concurrently, so that SQL checks of one batch overlap (each database has its own limit).
        return await asyncio.gather(*(score_prompt(e, databases.check) for e in events))

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
