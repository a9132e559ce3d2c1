"""The composition root declares the three consumers with the policies the recorder relies on,
and provides every dependency its handlers and screen ask for (checked without a server)."""

import pytest

from contracts.topology import RECORDER_BREAKERS, RECORDER_DEAD_LETTERS, RECORDER_EVENTS
from services.recorder import app, checks, handlers, parsing
from services.runtime.messaging.handling import Invalid
from services.runtime.messaging.service import Service
from services.runtime.settings import Settings


def test_three_consumers_are_declared_and_every_dependency_is_provided(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Service] = []

    class Recorded(Service):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    settings = Settings(
        nats_url="nats://127.0.0.1:1",
        database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none",
        consumer_batch_size=64,
        consumer_batch_wait_s=0.5,
    )
    monkeypatch.setattr(app, "Service", Recorded)
    monkeypatch.setattr(app, "get_settings", lambda: settings)
    app.create_app()
    [service] = made
    declared = {d.spec: d for d in service._declared}
    assert set(declared) == {RECORDER_EVENTS, RECORDER_DEAD_LETTERS, RECORDER_BREAKERS}
    events, letters, breakers = declared[RECORDER_EVENTS], declared[RECORDER_DEAD_LETTERS], declared[RECORDER_BREAKERS]
    assert (events.parse, events.screen, events.handler) == (
        parsing.parse_event,
        handlers.screen_events,
        handlers.on_events,
    )
    assert (events.batch_size, events.max_wait_s, events.invalid) == (64, 0.5, Invalid.DEAD_LETTER)
    assert (letters.parse, letters.handler) == (parsing.parse_dead_letter, handlers.on_dead_letters)
    assert (breakers.parse, breakers.handler) == (parsing.parse_breaker_event, handlers.on_breaker_events)
    for d in (letters, breakers):
        assert d.invalid is Invalid.DROP and d.max_wait_s == 0.5
    for d in (events, letters, breakers):
        assert d.batched and d.transient is checks.database_down
        service._bind(d.handler)  # raises if a dependency is missing
    assert events.screen is not None
    service._bind(events.screen)
