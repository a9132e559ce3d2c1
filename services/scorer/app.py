"""Scorer service: `faststream run --factory services.scorer.app:create_app`."""

from faststream import FastStream

from contracts.topology import SCORER_JUDGED
from services.runtime.messaging.service import Service
from services.runtime.settings import get_settings
from services.scorer.handlers import on_prompts_judged
from services.scorer.logic import ReferenceDatabases

SERVICE = "scorer"


def create_app() -> FastStream:
    settings = get_settings()
    service = Service(SERVICE, settings)
    urls = {name: url.get_secret_value() for name, url in settings.reference_databases.items()}
    service.provide(
        databases=ReferenceDatabases(urls, settings.sql_check_concurrency),
        pattern_timeout_s=settings.pattern_timeout_s,
    )
    service.batch_consumer(
        SCORER_JUDGED, batch_size=settings.consumer_batch_size, max_wait_s=settings.consumer_batch_wait_s
    )(on_prompts_judged)
    return service.app
