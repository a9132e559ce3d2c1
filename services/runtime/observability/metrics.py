"""Prometheus metrics of one service process, served over HTTP on `EVALBUS_METRICS_PORT` (0: off).

Labels are bounded by construction: events by their type (`prompt.queued`, never the batch id),
consumers by durable, model endpoints by URL up to MAX_ENDPOINTS (any further one is `other`:
a batch may name unlisted URLs where the operator allows them). The hot path pays a dictionary
lookup and a counter increment or histogram observation: every label child is made once and kept.

The hooks outside handling (the model client, the breaker, publishing) read the process's
metrics through `active()`, None while metrics are off, so a process without them pays a None test.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar
from wsgiref.simple_server import WSGIServer

from nats.js import JetStreamContext
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.metrics import MetricWrapperBase

from contracts import subjects
from contracts.base import Event
from contracts.events import EVENT_TYPES
from contracts.topology import ConsumerSpec

log = logging.getLogger("evalbus.metrics")

T = TypeVar("T")
C = TypeVar("C", bound=MetricWrapperBase)
MAX_ENDPOINTS: Final = 64
OTHER: Final = "other"
# How often the consumers' lag is read from JetStream (one consumer info request per durable).
LAG_EVERY_S: Final = 15.0
BREAKER_STATES: Final = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
MODEL_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


def kind_of(value: object, subject: str = "") -> str:
    """What a parsed message is, as a label: an event's `entity.verb`; what a parser wrapped an
    event in (a generator's start delivery), by its subject's known event type; else its class name."""
    if isinstance(value, Event):
        return f"{value.entity}.{value.verb}"
    parsed = subjects.parse_batch_subject(subject)
    if parsed is not None and (parsed.entity, parsed.verb) in EVENT_TYPES:
        return f"{parsed.entity}.{parsed.verb}"
    return type(value).__name__


class Metrics:
    """Every metric family of a process, in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:  # a process's own: with its CPU, memory and GC
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        r = self.registry
        self.consumed = Counter(
            "evalbus_events_consumed",
            "Messages taken from a consumer, by what they parsed as",
            ["durable", "kind"],
            registry=r,
        )
        self.outcomes = Counter(
            "evalbus_messages_handled",
            "Messages settled, by outcome (acked, passed, retry_later, redelivered, dead_lettered, dropped)",
            ["durable", "outcome"],
            registry=r,
        )
        self.handler_seconds = Histogram(
            "evalbus_handler_seconds",
            "Time in a handler call and the publishing of its results (a batch consumer: per batch)",
            ["durable"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dead_letters = Counter(
            "evalbus_dead_letters", "Messages dead-lettered, by cause", ["durable", "cause"], registry=r
        )
        self.published = Counter(
            "evalbus_events_published", "Events published and stored, by type", ["kind"], registry=r
        )
        self.tokens = Counter(
            "evalbus_tokens",
            "Tokens in published results (usage of prompt.responded, prompt.judged)",
            ["kind", "direction"],
            registry=r,
        )
        self.cost = Counter("evalbus_cost_usd", "Estimated cost in published results, USD", ["kind"], registry=r)
        self.model_calls = Counter(
            "evalbus_model_calls",
            "Model call attempts, by endpoint and outcome (ok, or the failure category)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.model_seconds = Histogram(
            "evalbus_model_call_seconds",
            "Time of one model call attempt, waits for the breaker, rate budget and slots included",
            ["endpoint"],
            buckets=MODEL_BUCKETS,
            registry=r,
        )
        self.model_retries = Counter(
            "evalbus_model_retries", "Model call attempts after the first", ["endpoint"], registry=r
        )
        self.model_tokens = Counter(
            "evalbus_model_tokens",
            "Tokens of answered model calls (billed, repeats included)",
            ["endpoint", "direction"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "evalbus_breaker_transitions",
            "Breaker state changes, by the state entered",
            ["endpoint", "state"],
            registry=r,
        )
        self.breaker_state = Gauge(
            "evalbus_breaker_state", "Breaker state: 0 closed, 1 half open, 2 open", ["endpoint"], registry=r
        )
        self.pending = Gauge(
            "evalbus_consumer_pending",
            "Messages not yet delivered to the durable (JetStream num_pending)",
            ["durable"],
            registry=r,
        )
        self.ack_pending = Gauge(
            "evalbus_consumer_ack_pending",
            "Messages delivered, not yet acked (JetStream num_ack_pending)",
            ["durable"],
            registry=r,
        )
        self._published: dict[type, tuple[Counter, Counter | None, Counter | None, Counter | None]] = {}
        self._endpoints: dict[str, ModelEndpointMetrics] = {}

    def consumer(self, durable: str) -> "ConsumerMetrics":
        return ConsumerMetrics(self, durable)

    # ---- publishing ------------------------------------------------------------------------------

    def published_events(self, events: Sequence[Event]) -> None:
        for ev in events:
            children = self._published.get(type(ev))
            if children is None:
                children = self._published_children(ev)
            children[0].inc()
            if children[1] is not None and children[2] is not None and children[3] is not None:
                usage = ev.usage  # type: ignore[attr-defined]  # the types with children for it have one
                children[1].inc(usage.tokens_in)
                children[2].inc(usage.tokens_out)
                children[3].inc(usage.cost_usd)

    def _published_children(self, ev: Event) -> tuple[Counter, Counter | None, Counter | None, Counter | None]:
        kind = kind_of(ev)
        has_usage = hasattr(ev, "usage")
        children = (
            self.published.labels(kind),
            self.tokens.labels(kind, "in") if has_usage else None,
            self.tokens.labels(kind, "out") if has_usage else None,
            self.cost.labels(kind) if has_usage else None,
        )
        self._published[type(ev)] = children
        return children

    # ---- model calls -----------------------------------------------------------------------------

    def endpoint(self, url: str) -> "ModelEndpointMetrics":
        found = self._endpoints.get(url)
        if found is None:
            label = url if len(self._endpoints) < MAX_ENDPOINTS else OTHER
            found = self._endpoints[url] = ModelEndpointMetrics(self, label)
            found.state.set(0.0)  # closed until it changes: a breaker never opened is a known state
        return found

    def breaker_changed(self, url: str, old: str, new: str) -> None:
        ep = self.endpoint(url)
        ep.state.set(BREAKER_STATES.get(new, -1.0))
        self.breaker_transitions.labels(ep.label, new).inc()


class ModelEndpointMetrics:
    """One endpoint's children, made once."""

    def __init__(self, metrics: Metrics, label: str) -> None:
        self.label = label
        self._metrics = metrics
        self.seconds = metrics.model_seconds.labels(label)
        self.retries = metrics.model_retries.labels(label)
        self.tokens_in = metrics.model_tokens.labels(label, "in")
        self.tokens_out = metrics.model_tokens.labels(label, "out")
        self.state = metrics.breaker_state.labels(label)
        self._outcomes: dict[str, Counter] = {"ok": metrics.model_calls.labels(label, "ok")}

    def outcome(self, name: str) -> Counter:
        child = self._outcomes.get(name)
        if child is None:  # failure categories: a small enum
            child = self._outcomes[name] = self._metrics.model_calls.labels(self.label, name)
        return child

    async def observe(self, attempt: int, call: Awaitable[T]) -> T:
        """One attempt of a model call: its outcome, time and tokens."""
        if attempt > 1:
            self.retries.inc()
        started = time.perf_counter()
        try:
            result = await call
        except BaseException as exc:
            self.seconds.observe(time.perf_counter() - started)
            category = getattr(exc, "category", None)
            self.outcome(str(category.value) if category is not None else type(exc).__name__).inc()
            raise
        self.seconds.observe(time.perf_counter() - started)
        self._outcomes["ok"].inc()
        self.tokens_in.inc(getattr(result, "tokens_in", 0))
        self.tokens_out.inc(getattr(result, "tokens_out", 0))
        return result


class ConsumerMetrics:
    """One durable's children, made once (kinds as they are first seen: event types and parser
    results are classes in code, so there are few)."""

    def __init__(self, metrics: Metrics, durable: str) -> None:
        self.durable = durable
        self._metrics = metrics
        self.seconds = metrics.handler_seconds.labels(durable)
        self._kinds: dict[type, Counter] = {}
        self._wrapped: dict[str, Counter] = {}
        self._outcomes: dict[str, Counter] = {}
        self._causes: dict[str, Counter] = {}
        self.acked = metrics.outcomes.labels(durable, "acked")  # the common outcome, without a lookup
        self._outcomes["acked"] = self.acked
        self.unparsed = metrics.consumed.labels(durable, "unparsed")
        self.passed = metrics.consumed.labels(durable, "passed")

    def consumed(self, value: object, subject: str) -> None:
        child = self._kinds.get(type(value))  # an event: by its class, no parsing of the subject
        if child is None:
            if isinstance(value, Event):
                child = self._kinds[type(value)] = self._metrics.consumed.labels(self.durable, kind_of(value))
            else:  # a wrapper: by what its subject says (event types and class names, a few labels)
                kind = kind_of(value, subject)
                child = self._wrapped.get(kind)
                if child is None:
                    child = self._wrapped[kind] = self._metrics.consumed.labels(self.durable, kind)
        child.inc()

    def outcome(self, name: str, n: int = 1) -> None:
        child = self._outcomes.get(name)
        if child is None:
            child = self._outcomes[name] = self._metrics.outcomes.labels(self.durable, name)
        child.inc(n)

    def dead_lettered(self, cause: str) -> None:
        child = self._causes.get(cause)
        if child is None:
            child = self._causes[cause] = self._metrics.dead_letters.labels(self.durable, cause)
        child.inc()
        self.outcome("dead_lettered")


# ---- the process's metrics ----------------------------------------------------------------------

_active: Metrics | None = None


def active() -> Metrics | None:
    """The process's metrics, None while they are off."""
    return _active


def enable(registry: CollectorRegistry | None = None) -> Metrics:
    """Turn metrics on for this process (once; again returns the same)."""
    global _active
    if _active is None:
        _active = Metrics(registry)
    return _active


def disable() -> None:
    """For tests: metrics off again."""
    global _active
    _active = None


def breaker_changed(url: str, old: str, new: str) -> None:
    """The breaker's hook (services/runtime/models/breaker.py)."""
    if _active is not None:
        _active.breaker_changed(url, old, new)


def model_endpoint(url: str) -> ModelEndpointMetrics | None:
    """The model client's hook: an endpoint's children, None while metrics are off."""
    return _active.endpoint(url) if _active is not None else None


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes (`/metrics`), in a thread of its own."""

    def __init__(self, metrics: Metrics, port: int, host: str) -> None:
        self._metrics = metrics
        self.port = port
        self.host = host
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(self.port, self.host, registry=self._metrics.registry)
        except OSError as exc:  # a busy port costs the metrics, never the service
            log.error("metrics not served: cannot listen on %s:%d (%s)", self.host, self.port, exc)
            return
        self.port = self._server.server_port
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


async def watch_lag_forever(
    metrics: Metrics, js: Callable[[], JetStreamContext], specs: Sequence[ConsumerSpec], every_s: float = LAG_EVERY_S
) -> None:
    """Each consumer's lag as JetStream sees it, read every `every_s` (replicas of a service report
    the same durable alike: aggregate with max, not sum)."""
    gauges = [(spec, metrics.pending.labels(spec.durable), metrics.ack_pending.labels(spec.durable)) for spec in specs]
    while True:
        for spec, pending, ack_pending in gauges:
            try:
                info = await js().consumer_info(spec.stream, spec.durable, timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the server may be away: read again next time
                log.debug("consumer %s: lag not read: %r", spec.durable, exc)
                continue
            pending.set(info.num_pending or 0)
            ack_pending.set(info.num_ack_pending or 0)
        await asyncio.sleep(every_s)
