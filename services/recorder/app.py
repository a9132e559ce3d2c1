"""Recorder service: `faststream run --factory services.recorder.app:create_app`.

It writes every event in bulk, acks only after commit, and publishes progress and the
batch-completed event from a flush loop that reads committed rows.
"""

from faststream import FastStream
from nats.micro.service import Service as MicroService

from contracts.topology import RECORDER_BREAKERS, RECORDER_DEAD_LETTERS, RECORDER_EVENTS
from services.recorder import checks, handlers, parsing
from services.recorder.api import start_api
from services.recorder.redrive import Redriver
from services.recorder.repository import Repository, connect
from services.recorder.streams import BreakerLag, StreamOriginals
from services.recorder.tracker import Tracker
from services.runtime.messaging.handling import Invalid
from services.runtime.messaging.service import Service
from services.runtime.settings import get_settings

SERVICE = "recorder"
SIDE_BATCH = 256  # dead letters and breaker events: few, and cheap to write


def create_app() -> FastStream:
    settings = get_settings()
    service = Service(SERVICE, settings)
    engine = connect(settings.require_database_url())
    tracker = Tracker(engine, service.publisher, BreakerLag(service.publisher))
    redriver = Redriver(engine, service.publisher)
    service.provide(tracker=tracker, repository=Repository(engine), originals=StreamOriginals(service.publisher))
    api: list[MicroService] = []  # held while the service runs

    async def started() -> None:
        await tracker.recover()
        api.append(await start_api(service.broker.connection, engine, redriver))

    service.on_started(started)
    service.background(lambda: tracker.flush_forever(settings.progress_interval_s))
    service.background(lambda: redriver.redrive_idle_forever(settings.stall_after_s))
    service.on_stopped(engine.dispose)
    wait_s, down = settings.consumer_batch_wait_s, checks.database_down
    service.batch_consumer(
        RECORDER_EVENTS,
        parse=parsing.parse_event,
        screen=handlers.screen_events,
        transient=down,
        batch_size=settings.consumer_batch_size,
        max_wait_s=wait_s,
    )(handlers.on_events)
    # Unusable messages on these two streams are only logged and acked (no dead letters of dead letters).
    service.batch_consumer(
        RECORDER_DEAD_LETTERS,
        parse=parsing.parse_dead_letter,
        invalid=Invalid.DROP,
        transient=down,
        batch_size=SIDE_BATCH,
        max_wait_s=wait_s,
    )(handlers.on_dead_letters)
    service.batch_consumer(
        RECORDER_BREAKERS,
        parse=parsing.parse_breaker_event,
        invalid=Invalid.DROP,
        transient=down,
        batch_size=SIDE_BATCH,
        max_wait_s=wait_s,
    )(handlers.on_breaker_events)
    return service.app
