"""Tracing (services/runtime/observability/tracing.py): a prompt handed from handler to handler, its
context carried in the published messages' headers, is one trace; off, nothing is added."""

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.base import Event
from contracts.events import PromptJudged, PromptQueued, PromptResponded, StartBatchRequested
from services.runtime.messaging.handling import handle_batch, handle_one, typed
from services.runtime.observability import tracing
from tests.factories import BatchEvents
from tests.fakes import FakeJs, FakeMsg, policy_for

events = BatchEvents("b-trace")


class HeaderJs(FakeJs):
    """Keeps each published message whole, headers too, to deliver it to the next handler."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[FakeMsg] = []

    async def publish_async(self, subject: str, payload: bytes, **kw: Any) -> "asyncio.Future[Any]":
        sent = FakeMsg(subject, payload, len(self.sent) + 1)
        sent.headers = kw.get("headers")
        self.sent.append(sent)
        return await super().publish_async(subject, payload, **kw)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable("svc", provider)
    yield exporter
    tracing.disable()


async def respond(evt: PromptQueued) -> Event:
    return events.responded(evt.index)


async def judge(batch: list[PromptResponded]) -> Sequence[Event]:
    return [events.judged(evt.index) for evt in batch]


async def test_one_prompt_through_two_handlers_is_one_trace(spans: InMemorySpanExporter) -> None:
    js = HeaderJs()
    chat = dataclasses.replace(policy_for(js, typed(PromptQueued)), tracer=tracing.active(), durable="chat")
    for i in range(3):  # three prompts: three traces
        queued = events.queued(i)
        await handle_one(chat, FakeMsg(queued.subject, queued.to_json(), i + 1), respond)  # type: ignore[arg-type]
    responded = list(js.sent)
    assert all(m.headers and "traceparent" in m.headers and "Nats-Msg-Id" in m.headers for m in responded)

    # The judge's batch consumer takes the three together; each judgment continues its own prompt.
    judge_js = HeaderJs()
    judging = dataclasses.replace(policy_for(judge_js, typed(PromptResponded)), tracer=tracing.active(), durable="jd")
    await handle_batch(judging, responded, judge)  # type: ignore[arg-type]
    assert [m.outcomes for m in responded] == [[("ack", None)]] * 3

    finished = spans.get_finished_spans()
    by_prompt: dict[str, set[int]] = {}
    for span in finished:
        prompt = span.attributes.get("evalbus.prompt_id") if span.attributes else None
        if prompt is not None:
            by_prompt.setdefault(str(prompt), set()).add(span.context.trace_id)
    assert len(by_prompt) == 3 and all(len(ids) == 1 for ids in by_prompt.values())  # a trace per prompt
    assert len({next(iter(ids)) for ids in by_prompt.values()}) == 3
    chat_spans = {s.attributes["evalbus.prompt_id"]: s for s in finished if s.name == "svc prompt.queued"}  # type: ignore[index]
    judge_spans = [s for s in finished if s.name == "svc prompt.responded"]
    assert len(chat_spans) == 3 and len(judge_spans) == 3
    for span in judge_spans:  # each judge span is the child of the chat-runner span that published it
        parent = chat_spans[span.attributes["evalbus.prompt_id"]]  # type: ignore[index]
        assert span.parent is not None and span.parent.span_id == parent.context.span_id

    # What the judge published carries each prompt's own trace on to the scorer.
    for sent in judge_js.sent:
        judged = PromptJudged.model_validate_json(sent.data)
        assert sent.headers is not None
        trace_id = int(sent.headers["traceparent"].split("-")[1], 16)
        assert by_prompt[judged.prompt_id] == {trace_id}


async def test_without_tracing_a_message_gets_only_its_id_header() -> None:
    tracing.disable()
    js = HeaderJs()
    chat = policy_for(js, typed(PromptQueued))
    queued = events.queued(0)
    await handle_one(chat, FakeMsg(queued.subject, queued.to_json()), respond)  # type: ignore[arg-type]
    assert [m.headers for m in js.sent] == [{"Nats-Msg-Id": events.responded(0).event_id}]


async def test_each_queued_prompt_starts_its_own_trace_linked_to_the_start(spans: InMemorySpanExporter) -> None:
    js = HeaderJs()
    generator = dataclasses.replace(policy_for(js, typed(StartBatchRequested)), tracer=tracing.active(), durable="g")

    async def start(evt: StartBatchRequested) -> Sequence[Event]:
        return [events.queued(i) for i in range(3)]

    begun = events.start_requested()
    await handle_one(generator, FakeMsg(begun.subject, begun.to_json()), start)  # type: ignore[arg-type]
    (start_span,) = [s for s in spans.get_finished_spans() if s.name == "svc start.requested"]
    roots = [s for s in spans.get_finished_spans() if s.name == "svc prompt.queued"]
    assert len(roots) == 3 and all(s.parent is None for s in roots)
    assert all([link.context.span_id for link in s.links] == [start_span.context.span_id] for s in roots)
    carried = {int(m.headers["traceparent"].split("-")[1], 16) for m in js.sent if m.headers}
    assert carried == {s.context.trace_id for s in roots} and start_span.context.trace_id not in carried


def test_the_exporters_are_built_from_the_setting() -> None:
    for exporter in ("otlp", "console"):
        tracing.provider_for("judge", exporter).shutdown()
    with pytest.raises(ValueError):
        tracing.provider_for("judge", "zipkin")
