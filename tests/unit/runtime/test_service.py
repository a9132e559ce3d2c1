"""A service's declarations: parsers from handler annotations, dependencies by parameter name."""

from collections.abc import Sequence

import pytest

from contracts.events import PromptQueued, PromptScored
from contracts.topology import CHAT_RUNNER_QUEUED, SCORER_JUDGED
from services.runtime.messaging.handling import Incoming
from services.runtime.messaging.service import Service
from services.runtime.settings import Settings
from tests.factories import BatchEvents


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


def service() -> Service:
    # Nothing connects until the app starts: a declared service needs no server.
    return Service("test", Settings(nats_url="nats://127.0.0.1:1"))


async def on_scored(evt: PromptScored, ledger: list[int]) -> None:
    ledger.append(evt.index)


async def on_many(events: list[PromptScored], ledger: list[int]) -> Sequence[PromptScored]:
    ledger.extend(e.index for e in events)
    return events


async def test_the_handlers_annotation_picks_its_parser_and_its_parameters_its_dependencies() -> None:
    svc, ledger = service(), []
    svc.provide(ledger=ledger)
    svc.consumer(CHAT_RUNNER_QUEUED)(on_scored)
    svc.batch_consumer(SCORER_JUDGED)(on_many)
    one, many = svc._declared
    evt = _scored("b-svc", 3)
    parsed = one.parse(Incoming(evt.subject, evt.to_json()))
    assert parsed == evt and many.parse(Incoming(evt.subject, evt.to_json())) == evt
    await svc._bind(one.handler)(parsed)
    await svc._bind(many.handler)([parsed, parsed])
    assert ledger == [3, 3, 3]


async def test_the_publisher_is_always_there() -> None:
    async def forwards(evt: PromptQueued, publisher: object) -> object:
        return publisher

    svc = service()
    assert await svc._bind(forwards)(None) is svc.publisher


def test_a_dependency_no_one_provides_fails_when_bound_not_on_the_first_message() -> None:
    svc = service()
    svc.consumer(CHAT_RUNNER_QUEUED)(on_scored)
    with pytest.raises(TypeError, match=r"asks for \['ledger'\]"):
        svc._bind(svc._declared[0].handler)


def test_a_handler_without_a_model_annotation_must_say_how_to_parse() -> None:
    async def untyped(evt, ledger):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(TypeError, match="annotate what it handles"):
        service().consumer(CHAT_RUNNER_QUEUED)(untyped)
    service().consumer(CHAT_RUNNER_QUEUED, parse=lambda msg: msg.data)(untyped)  # an own parser is fine
