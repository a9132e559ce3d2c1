"""Prometheus metrics (services/runtime/observability/metrics.py) as handling, publishing, the model
client and the breaker feed them, with fakes for the broker and the model endpoint."""

import dataclasses
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from contracts.base import Event
from contracts.enums import FailureCategory
from contracts.events import PromptQueued, PromptScored
from services.runtime.messaging.handling import Refused, RetryLater, handle_batch, handle_one, typed
from services.runtime.models.breaker import ProviderBreaker
from services.runtime.models.client import ModelCallError
from services.runtime.observability import metrics
from services.runtime.observability.metrics import MAX_ENDPOINTS, Metrics, MetricsServer
from tests.factories import BatchEvents
from tests.fakes import FakeJs, FakeMsg, policy_for

BATCH = "b-metrics"
events = BatchEvents(BATCH)


@pytest.fixture
def m() -> Iterator[Metrics]:
    """This process's metrics, on, in a registry of the test's own."""
    metrics.disable()
    yield metrics.enable(CollectorRegistry())
    metrics.disable()


def value(m: Metrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def msg(evt: Event, seq: int = 1) -> FakeMsg:
    return FakeMsg(evt.subject, evt.to_json(), seq)


async def test_a_handled_message_counts_its_type_its_outcome_its_time_and_what_it_published(m: Metrics) -> None:
    policy = dataclasses.replace(policy_for(FakeJs(), typed(PromptQueued)), metrics=m.consumer("d"))

    async def work(evt: PromptQueued) -> Event:
        return events.responded(evt.index)

    for i in range(3):
        await handle_one(policy, msg(events.queued(i), i + 1), work)  # type: ignore[arg-type]
    assert value(m, "evalbus_events_consumed_total", durable="d", kind="prompt.queued") == 3
    assert value(m, "evalbus_messages_handled_total", durable="d", outcome="acked") == 3
    assert value(m, "evalbus_handler_seconds_count", durable="d") == 3
    assert value(m, "evalbus_events_published_total", kind="prompt.responded") == 3
    responded = events.responded(0)
    assert value(m, "evalbus_tokens_total", kind="prompt.responded", direction="in") == 3 * responded.usage.tokens_in
    assert value(m, "evalbus_cost_usd_total", kind="prompt.responded") == pytest.approx(3 * responded.usage.cost_usd)


async def test_labels_name_event_types_never_batches(m: Metrics) -> None:
    policy = dataclasses.replace(policy_for(FakeJs(), typed(PromptScored)), metrics=m.consumer("d"))

    async def work(evt: PromptScored) -> None:
        return None

    for i, batch in enumerate(("b-one", "b-two", "b-three")):
        await handle_one(policy, msg(BatchEvents(batch).scored(i)), work)  # type: ignore[arg-type]
    samples = [s for fam in m.registry.collect() for s in fam.samples if s.name == "evalbus_events_consumed_total"]
    assert [(s.labels, s.value) for s in samples if s.value] == [({"durable": "d", "kind": "prompt.scored"}, 3.0)]


async def test_dead_letters_retries_and_unparsed_messages_are_counted_by_cause(m: Metrics) -> None:
    js = FakeJs()
    policy = dataclasses.replace(policy_for(js, typed(PromptScored)), metrics=m.consumer("d"))

    async def refuse(evt: PromptScored) -> None:
        raise Refused("never")

    async def later(evt: PromptScored) -> None:
        raise RetryLater(1.0, "not now")

    async def broken(evt: PromptScored) -> None:
        raise RuntimeError("bug")

    await handle_one(policy, msg(events.scored(0)), refuse)  # type: ignore[arg-type]
    await handle_one(policy, msg(events.scored(1)), later)  # type: ignore[arg-type]
    await handle_one(policy, msg(events.scored(2)), broken)  # type: ignore[arg-type]
    await handle_one(policy, FakeMsg(events.scored(3).subject, b"{not json"), refuse)  # type: ignore[arg-type]
    assert value(m, "evalbus_dead_letters_total", durable="d", cause="refused") == 1
    assert value(m, "evalbus_dead_letters_total", durable="d", cause="invalid") == 1
    assert value(m, "evalbus_messages_handled_total", durable="d", outcome="dead_lettered") == 2
    assert value(m, "evalbus_messages_handled_total", durable="d", outcome="retry_later") == 1
    assert value(m, "evalbus_messages_handled_total", durable="d", outcome="redelivered") == 1
    assert value(m, "evalbus_events_consumed_total", durable="d", kind="unparsed") == 1
    assert len(js.letters()) == 2


async def test_a_batch_consumer_counts_each_message_and_times_each_call(m: Metrics) -> None:
    policy = dataclasses.replace(policy_for(FakeJs(), typed(PromptScored)), metrics=m.consumer("b"))
    raws = [msg(events.scored(i), i + 1) for i in range(10)]

    async def work(batch: list[PromptScored]) -> Sequence[Event]:
        if any(e.index == 4 for e in batch):
            raise RuntimeError("poison")
        return []

    await handle_batch(policy, raws, work)  # type: ignore[arg-type]
    assert value(m, "evalbus_events_consumed_total", durable="b", kind="prompt.scored") == 10
    assert value(m, "evalbus_messages_handled_total", durable="b", outcome="acked") == 9
    assert value(m, "evalbus_messages_handled_total", durable="b", outcome="redelivered") == 1
    assert (
        value(m, "evalbus_handler_seconds_count", durable="b") == 1
    )  # the first call; the splits are not handler calls


async def test_nothing_is_counted_while_metrics_are_off() -> None:
    metrics.disable()
    policy = policy_for(FakeJs(), typed(PromptScored))

    async def work(evt: PromptScored) -> None:
        return None

    raw = msg(events.scored(0))
    await handle_one(policy, raw, work)  # type: ignore[arg-type]
    assert raw.settled == ["ack"] and metrics.active() is None and metrics.model_endpoint("http://x/v1") is None


async def test_model_calls_count_outcomes_retries_and_tokens_per_endpoint(m: Metrics) -> None:
    ep = metrics.model_endpoint("http://model/v1")
    assert ep is not None

    async def answered() -> Any:
        return dataclasses.make_dataclass("C", ["tokens_in", "tokens_out"])(12, 5)

    async def throttled() -> Any:
        raise ModelCallError(FailureCategory.RATE_LIMIT, "429", retryable=True)

    with pytest.raises(ModelCallError):
        await ep.observe(1, throttled())
    await ep.observe(2, answered())
    assert value(m, "evalbus_model_calls_total", endpoint="http://model/v1", outcome="ok") == 1
    assert (
        value(m, "evalbus_model_calls_total", endpoint="http://model/v1", outcome=FailureCategory.RATE_LIMIT.value) == 1
    )
    assert value(m, "evalbus_model_retries_total", endpoint="http://model/v1") == 1
    assert value(m, "evalbus_model_tokens_total", endpoint="http://model/v1", direction="in") == 12
    assert value(m, "evalbus_model_call_seconds_count", endpoint="http://model/v1") == 2
    assert value(m, "evalbus_breaker_state", endpoint="http://model/v1") == 0  # known closed from the first call


async def test_endpoints_past_the_cap_share_one_label(m: Metrics) -> None:
    for i in range(MAX_ENDPOINTS + 5):
        metrics.model_endpoint(f"http://host-{i}/v1")
    labels = {
        s.labels["endpoint"] for fam in m.registry.collect() for s in fam.samples if s.name == "evalbus_breaker_state"
    }
    assert len(labels) == MAX_ENDPOINTS + 1 and "other" in labels


async def test_the_breaker_reports_its_state_and_transitions(m: Metrics) -> None:
    breaker = ProviderBreaker("http://flaky/v1", fail_max=2, reset_s=0.01, counts=lambda e: True)

    async def fail() -> None:
        raise ConnectionError("down")

    async def ok() -> str:
        return "ok"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(fail)
    assert value(m, "evalbus_breaker_state", endpoint="http://flaky/v1") == 2
    assert await breaker.call(ok) == "ok"
    assert value(m, "evalbus_breaker_state", endpoint="http://flaky/v1") == 0
    assert value(m, "evalbus_breaker_transitions_total", endpoint="http://flaky/v1", state="open") == 1
    assert value(m, "evalbus_breaker_transitions_total", endpoint="http://flaky/v1", state="closed") == 1


async def test_the_server_serves_the_registry_over_http(m: Metrics) -> None:
    m.published_events([events.queued(0)])
    server = MetricsServer(m, 0, "127.0.0.1")  # port 0: any free one
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    assert 'evalbus_events_published_total{kind="prompt.queued"} 1.0' in text


def test_a_busy_port_costs_the_metrics_not_the_service(m: Metrics) -> None:
    first = MetricsServer(m, 0, "127.0.0.1")
    first.start()
    try:
        second = MetricsServer(m, first.port, "127.0.0.1")
        second.start()  # logs, does not raise
        second.stop()
    finally:
        first.stop()


async def test_a_parser_that_wraps_the_event_is_counted_by_its_subjects_event_type(m: Metrics) -> None:
    @dataclasses.dataclass(frozen=True)
    class Delivery:
        data: bytes

    policy = dataclasses.replace(policy_for(FakeJs(), lambda msg: Delivery(msg.data)), metrics=m.consumer("d"))

    async def work(delivery: Delivery) -> None:
        return None

    await handle_one(policy, msg(events.start_requested()), work)  # type: ignore[arg-type]
    await handle_one(policy, FakeMsg("evalbus.v1.dlq.judge", b"{}"), work)  # type: ignore[arg-type]
    await handle_one(policy, FakeMsg("evalbus.v1.batch.b.made.up", b"{}"), work)  # type: ignore[arg-type]
    assert value(m, "evalbus_events_consumed_total", durable="d", kind="start.requested") == 1
    assert value(m, "evalbus_events_consumed_total", durable="d", kind="Delivery") == 2  # never a made-up type
