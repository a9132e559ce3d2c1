"""The composition root declares both consumers with the policies the generator relies on, and
provides every dependency its handlers ask for (checked without a server)."""

import pytest

from contracts.topology import GENERATOR_CANCEL, GENERATOR_START
from services.generator import app
from services.generator.handlers import is_transient, read_cancel, read_start_delivery
from services.runtime.messaging.handling import Unexpected
from services.runtime.messaging.service import Service
from services.runtime.settings import Settings


def test_both_consumers_are_declared_and_every_dependency_is_provided(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Service] = []

    class Recorded(Service):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    monkeypatch.setattr(app, "Service", Recorded)
    monkeypatch.setattr(app, "get_settings", lambda: Settings(nats_url="nats://127.0.0.1:1"))
    app.create_app()
    [service] = made
    declared = {d.spec: d for d in service._declared}
    assert set(declared) == {GENERATOR_START, GENERATOR_CANCEL}
    start, cancel = declared[GENERATOR_START], declared[GENERATOR_CANCEL]
    assert (start.slots, start.parse, cancel.slots, cancel.parse) == (4, read_start_delivery, 2, read_cancel)
    for d in (start, cancel):
        assert d.transient is is_transient and d.unexpected is Unexpected.DEAD_LETTER
        service._bind(d.handler)  # raises if a dependency is missing
