"""Optional OpenTelemetry tracing (`EVALBUS_TRACING=otlp|console`, the `tracing` extra): one span per
handled message, child of the span that published it, so one prompt's way through the five
services is one trace. The context travels in NATS headers as W3C `traceparent`.

Off by default, and then nothing of OpenTelemetry is imported: `enable()` imports it, and the
hot path tests a None (`Policy.tracer`, the publish hook). A batch consumer gives each message its
own span, and an event it publishes for a prompt continues that prompt's trace (matched by batch
and prompt id); the rest continue the batch call's span. A queued prompt starts a trace of its
own (linked to the span that queued it: the batch's start).
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from contracts.base import Event
from services.runtime.messaging import publishing
from services.runtime.observability.metrics import kind_of

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanContext

QUEUED = ("prompt", "queued")
# In a batch handler call: each prompt's span context, by (batch id, prompt id).
_prompt_contexts: contextvars.ContextVar[dict[tuple[str, str], "SpanContext"] | None] = contextvars.ContextVar(
    "evalbus_prompt_contexts", default=None
)


def _key(value: object) -> tuple[str, str] | None:
    prompt_id = getattr(value, "prompt_id", None)
    batch_id = getattr(value, "batch_id", None)
    return (batch_id, prompt_id) if isinstance(prompt_id, str) and isinstance(batch_id, str) else None


class Tracing:
    """Spans of one service process, through the provider it was given."""

    def __init__(self, service: str, provider: "TracerProvider") -> None:
        from opentelemetry import propagate, trace

        self._trace = trace
        self._propagator = propagate.get_global_textmap()
        self.provider = provider
        self._tracer = provider.get_tracer("evalbus")
        self.service = service

    def _parent(self, raw: Msg) -> Any:
        headers = raw.headers
        return self._propagator.extract(headers) if headers and "traceparent" in headers else None

    @contextlib.contextmanager
    def handling(self, durable: str, raw: Msg, value: object) -> Iterator[None]:
        """One message's handler call, as the current span (what it publishes continues it)."""
        with self._tracer.start_as_current_span(
            f"{self.service} {kind_of(value, raw.subject)}",
            context=self._parent(raw),
            kind=self._trace.SpanKind.CONSUMER,
            attributes=_attributes(durable, value),
        ):
            yield

    @contextlib.contextmanager
    def handling_batch(self, durable: str, items: Sequence[tuple[Msg, object]]) -> Iterator[None]:
        """A batch handler call: a span per message, ended when the call is, and a span of the call."""
        spans = [
            self._tracer.start_span(
                f"{self.service} {kind_of(value, raw.subject)}",
                context=self._parent(raw),
                kind=self._trace.SpanKind.CONSUMER,
                attributes=_attributes(durable, value),
            )
            for raw, value in items
        ]
        contexts = {}
        for (_, value), span in zip(items, spans, strict=True):
            key = _key(value)
            if key is not None:
                contexts[key] = span.get_span_context()
        links = [self._trace.Link(span.get_span_context()) for span in spans[:128]]
        token = _prompt_contexts.set(contexts)
        try:
            with self._tracer.start_as_current_span(
                f"{self.service} batch of {len(items)}", links=links, attributes={"evalbus.durable": durable}
            ):
                yield
        finally:
            _prompt_contexts.reset(token)
            for span in spans:
                span.end()

    def inject(self, headers: dict[str, str], event: Event) -> None:
        """The publish hook: the context the event continues, as `traceparent`."""
        if (event.entity, event.verb) == QUEUED:
            self._propagator.inject(headers, context=self._prompt_root(event))
            return
        contexts = _prompt_contexts.get()
        if contexts:
            key = _key(event)
            found = contexts.get(key) if key is not None else None
            if found is not None:
                ctx = self._trace.set_span_in_context(self._trace.NonRecordingSpan(found))
                self._propagator.inject(headers, context=ctx)
                return
        self._propagator.inject(headers)

    def _prompt_root(self, event: Event) -> Any:
        """A queued prompt starts a trace of its own, linked to what queued it (a batch's start, a
        resume): a batch of 10,000 prompts is 10,000 traces of a few spans, not one of 50,000."""
        from opentelemetry.context import Context

        queued_by = self._trace.get_current_span().get_span_context()
        span = self._tracer.start_span(
            f"{self.service} prompt.queued",
            context=Context(),  # empty: a root
            kind=self._trace.SpanKind.PRODUCER,
            links=[self._trace.Link(queued_by)] if queued_by.is_valid else None,
            attributes=_attributes("", event),
        )
        span.end()
        return self._trace.set_span_in_context(span)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _attributes(durable: str, value: object) -> dict[str, str | int]:
    attributes: dict[str, str | int] = {"messaging.system": "nats"}
    if durable:
        attributes["evalbus.durable"] = durable
    key = _key(value)
    if key is not None:
        attributes["evalbus.batch_id"], attributes["evalbus.prompt_id"] = key
    elif isinstance(value, Event):
        attributes["evalbus.batch_id"] = value.batch_id
    return attributes


_active: Tracing | None = None


def active() -> Tracing | None:
    return _active


def provider_for(service: str, exporter: str) -> "TracerProvider":
    """A provider exporting in batches over OTLP (configured by the OTEL_EXPORTER_OTLP_* variables),
    or printing each span as one line of JSON on standard output."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as exc:
        raise RuntimeError(
            f"EVALBUS_TRACING={exporter} needs the tracing extra: pip install 'evalbus[tracing]'"
        ) from exc

    provider = TracerProvider(resource=Resource.create({"service.name": f"evalbus-{service}"}))
    span_exporter: SpanExporter
    if exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    elif exporter == "console":
        span_exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")  # a line each
    else:
        raise ValueError(f"unknown tracing exporter {exporter!r}: otlp or console")
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def enable(service: str, provider: "TracerProvider") -> Tracing:
    """Trace this process: handlers get spans, and publishing carries their context."""
    global _active
    _active = Tracing(service, provider)
    publishing.set_header_hook(_active.inject)
    return _active


def disable() -> None:
    global _active
    if _active is not None:
        publishing.set_header_hook(None)
        _active = None
