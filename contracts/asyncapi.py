"""The AsyncAPI 3 document of every subject evalbus uses: a pure function of the contracts.

Channels are the subject catalogue (`contracts.subjects`) with its variable tokens as parameters
(`{batch_id}`); a message's payload is its model's JSON Schema; an operation names the service
(`contracts.services`, or `client`: the evalbus CLI) that sends or receives it, in `x-service`.
Who receives from a stream is read from the durables of `contracts.topology`; who sends, and who
listens on plain subscriptions, is stated here, from the code that publishes.
`python -m infra.asyncapi` writes the document to docs/asyncapi.yaml.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts import subjects, topology
from contracts.base import SCHEMA_VERSION
from contracts.events import EVENT_TYPES
from contracts.ids import BATCH_ID_PATTERN
from contracts.ops import BreakerStateChanged, DeadLetter
from contracts.quality import QualityReport
from contracts.queries import BatchHistory, BatchRef, HistoryQuery, ResumeRequest, SamplesPage, SamplesQuery
from contracts.reports import BatchProgress, BatchReport, ResumeResult
from contracts.services import CHAT_RUNNER, GENERATOR, JUDGE, NAMES, RECORDER, SCORER

ASYNCAPI_VERSION = "3.0.0"
CLIENT = "client"  # the evalbus CLI and library (the `client` NATS user)
PARTIES: tuple[str, ...] = (*NAMES, CLIENT)
CONTENT_TYPE = "application/json"

# Who publishes each batch event (the recorder also re-drives a stalled batch's prompts).
EVENT_SENDERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("start", "requested"): (CLIENT,),
    ("cancel", "requested"): (CLIENT,),
    ("batch", "accepted"): (GENERATOR,),
    ("batch", "rejected"): (GENERATOR,),
    ("batch", "completed"): (RECORDER,),
    ("prompt", "queued"): (GENERATOR, RECORDER),
    ("prompt", "responded"): (CHAT_RUNNER, RECORDER),
    ("prompt", "judged"): (JUDGE, RECORDER),
    ("prompt", "scored"): (SCORER,),
    ("prompt", "failed"): (CHAT_RUNNER, JUDGE, SCORER),
    ("call", "billed"): (CHAT_RUNNER, JUDGE),
}
# Plain (core NATS) subscriptions, outside any durable: the CLI follows the batch it runs.
SUBSCRIPTIONS: tuple[tuple[str, str], ...] = (
    (CLIENT, subjects.batch_lifecycle("{batch_id}")),
    (CLIENT, subjects.progress("{batch_id}")),
)
MODEL_CALLERS: tuple[str, ...] = (CHAT_RUNNER, JUDGE)  # each model endpoint they call has a breaker


@dataclass(frozen=True)
class Api:
    """A request/reply endpoint of the recorder's query API (services/recorder/api.py)."""

    endpoint: str  # under `evalbus.v1.api.`
    request: type[BaseModel]
    reply: type[BaseModel]
    summary: str


API: tuple[Api, ...] = (
    Api("batch.status", BatchRef, BatchProgress, "A batch's progress, from committed rows."),
    Api("batch.report", BatchRef, BatchReport, "A batch's report (final once it finished)."),
    Api("batch.quality", BatchRef, QualityReport, "A finished batch's quality report."),
    Api("batch.samples", SamplesQuery, SamplesPage, "A page of a batch's prompts with everything recorded."),
    Api("batch.resume", ResumeRequest, ResumeResult, "Re-drive a running batch's unfinished prompts."),
    Api("batches.history", HistoryQuery, BatchHistory, "Recent batches, newest first."),
)
API_ERRORS = (
    "Errors are NATS micro service errors: an empty body with the `Nats-Service-Error-Code` header "
    "(400 bad request, naming the field; 404 no such batch; 503 database down; 500 anything else) "
    "and a one-line `Nats-Service-Error`."
)

# Payloads that no model describes: what a service's status endpoint answers, and nats-server's.
SERVICE_STATUS: dict[str, Any] = {
    "type": "object",
    "title": "ServiceStatus",
    "description": "A replica's own status (services/runtime/messaging/health.py).",
    "properties": {
        "service": {"type": "string"},
        "pid": {"type": "integer"},
        "healthy": {"type": "boolean", "description": "Connected, and every consumer healthy."},
        "connected": {"type": "boolean"},
        "consumers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "durable": {"type": "string"},
                    "alive": {"type": "boolean"},
                    "bound": {"type": "boolean"},
                    "in_flight": {"type": "integer"},
                    "handled": {"type": "integer"},
                    "lost_requests": {"type": "integer"},
                    "rebinds": {"type": "integer"},
                    "idle_s": {"type": "number"},
                    "ack_wait_s": {"type": "number"},
                },
            },
        },
    },
    "required": ["service", "pid", "healthy", "connected", "consumers"],
}
MAX_DELIVERIES_ADVISORY: dict[str, Any] = {
    "type": "object",
    "title": "MaxDeliveriesAdvisory",
    "description": "nats-server's `io.nats.jetstream.advisory.v1.max_deliver` notice (the fields the recorder reads).",
    "properties": {
        "type": {"type": "string", "const": "io.nats.jetstream.advisory.v1.max_deliver"},
        "stream": {"type": "string"},
        "consumer": {"type": "string"},
        "stream_seq": {"type": ["integer", "string"]},
        "deliveries": {"type": "integer"},
    },
    "required": ["stream_seq"],
}
EMPTY: dict[str, Any] = {"type": "string", "maxLength": 0, "title": "Empty", "description": "An empty body."}


def _msg_id(description: str) -> dict[str, Any]:
    return {"type": "object", "properties": {"Nats-Msg-Id": {"type": "string", "description": description}}}


SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceStatus": SERVICE_STATUS,
    "MaxDeliveriesAdvisory": MAX_DELIVERIES_ADVISORY,
    "Empty": EMPTY,
    "EventHeaders": _msg_id(
        "The event's `event_id`: JetStream drops a re-publish within the stream's duplicate window."
    ),
    "DeadLetterHeaders": _msg_id(
        "`dlq-<service>-<stream seq>` for a message from a stream: the same message dead-lettered again by the "
        "same service is kept once."
    ),
}

PARAMETERS: dict[str, dict[str, Any]] = {
    "batch_id": {"description": f"The batch's id: one subject token matching `{BATCH_ID_PATTERN}`."},
    "service": {"description": "A service's name (contracts.services).", "enum": list(NAMES)},
    "endpoint": {"description": "A model endpoint's base URL as one token (`subjects.endpoint_token`)."},
    "durable": {"description": "The durable consumer the message ran out of deliveries to."},
}


@dataclass
class _Channel:
    id: str
    address: str | None
    messages: tuple[str, ...]
    summary: str
    description: str = ""
    sends: tuple[str, ...] = ()
    receives: tuple[str, ...] = ()  # plain subscribers and services answering requests
    reply: "_Channel | None" = None
    headers: str | None = None  # the schema of its messages' headers


def _tokens_match(pattern: str, address: str) -> bool:
    """Whether a NATS filter covers every subject of a channel address: a `{parameter}` token is
    covered by `*`, `>` or the same `{parameter}` (a filter for one batch covers no channel)."""
    want, have = pattern.split("."), address.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def _stream_of(address: str) -> topology.StreamSpec | None:
    return next((s for s in topology.STREAMS if any(_tokens_match(p, address) for p in s.subjects)), None)


def _owner(spec: topology.ConsumerSpec) -> str:
    """The service whose durable it is: durables are named `<service>-<what it reads>`."""
    owners = [n for n in NAMES if spec.durable.startswith(f"{n}-")]
    if len(owners) != 1:
        raise ValueError(f"durable {spec.durable!r} names no single service")
    return owners[0]


def _durables(address: str) -> list[topology.ConsumerSpec]:
    stream = _stream_of(address)
    if stream is None:
        return []
    return [
        c
        for c in topology.CONSUMERS
        if c.stream == stream.name
        and (_tokens_match(c.filter_subject, address) if c.filter_subject else True)  # "": the whole stream
    ]


def _summary(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def _channels() -> list[_Channel]:
    out = []
    for (entity, verb), cls in EVENT_TYPES.items():
        out.append(
            _Channel(
                f"{entity}.{verb}",
                subjects.batch_event("{batch_id}", entity, verb),
                (cls.__name__,),
                _summary(cls),
                sends=EVENT_SENDERS[(entity, verb)],
                headers="EventHeaders",
            )
        )
    out.append(
        _Channel(
            "progress",
            subjects.progress("{batch_id}"),
            (BatchProgress.__name__,),
            "A batch's progress snapshots, from committed state.",
            "The stream keeps the last few per batch, so a late joiner reads the current one.",
            sends=(RECORDER,),
        )
    )
    out.append(
        _Channel(
            "dlq",
            subjects.dlq("{service}"),
            (DeadLetter.__name__,),
            "Messages a service could not use, with the reason.",
            sends=NAMES,
            headers="DeadLetterHeaders",
        )
    )
    out.append(
        _Channel(
            "advisory.max_deliveries",
            subjects.max_deliveries_advisory("{durable}"),
            ("MaxDeliveriesAdvisory",),
            "nats-server's notice that an event ran out of deliveries; kept on the dead-letter stream.",
            "Sent by nats-server itself; the recorder turns it into a dead letter holding the original event.",
        )
    )
    out.append(
        _Channel(
            "breaker",
            subjects.breaker_of("{endpoint}"),
            (BreakerStateChanged.__name__,),
            "A model endpoint's circuit breaker changed state.",
            sends=MODEL_CALLERS,
        )
    )
    status_reply = _Channel(
        "ctl.status.reply", None, ("ServiceStatus",), "A replica's status, to the requester's inbox."
    )
    out.append(
        _Channel(
            "ctl.status",
            f"{subjects.control('{service}')}.status",
            ("StatusRequest",),
            "Ask a service how it is (`evalbus health`); any one replica answers.",
            "A NATS micro service endpoint: `nats micro ls` lists every service.",
            sends=(CLIENT,),
            receives=NAMES,
            reply=status_reply,
        )
    )
    out.append(status_reply)
    for api in API:
        reply = _Channel(
            f"api.{api.endpoint}.reply",
            None,
            (api.reply.__name__,),
            f"The answer of `{api.endpoint}`, to the requester's inbox.",
            API_ERRORS,
        )
        out.append(
            _Channel(
                f"api.{api.endpoint}",
                subjects.api(api.endpoint),
                (api.request.__name__,),
                api.summary,
                "The recorder's query API, answered from the database (a NATS micro service endpoint).",
                sends=(CLIENT,),
                receives=(RECORDER,),
                reply=reply,
            )
        )
        out.append(reply)
    return out


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)}


def _channel_doc(ch: _Channel) -> dict[str, Any]:
    doc: dict[str, Any] = {"address": ch.address, "summary": ch.summary}
    if ch.description:
        doc["description"] = ch.description
    params = [p for p in PARAMETERS if ch.address and f"{{{p}}}" in ch.address]
    if params:
        doc["parameters"] = {p: PARAMETERS[p] for p in params}
    doc["messages"] = {m: _ref("components", "messages", m) for m in ch.messages}
    stream = _stream_of(ch.address) if ch.address else None
    if stream is not None:
        doc["x-stream"] = stream.name
    return doc


def _operation(ch: _Channel, party: str, action: str, durable: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "action": action,
        "channel": _ref("channels", ch.id),
        "summary": f"{party} {action}s {ch.id}" + (f" (durable `{durable}`)" if durable else ""),
        "messages": [_ref("channels", ch.id, "messages", m) for m in ch.messages],
        "x-service": party,
    }
    if durable:
        op["x-durable"] = durable
    if ch.reply is not None:
        op["reply"] = {
            "channel": _ref("channels", ch.reply.id),
            "messages": [_ref("channels", ch.reply.id, "messages", m) for m in ch.reply.messages],
        }
    return op


def _operations(channels: Iterable[_Channel]) -> dict[str, dict[str, Any]]:
    ops: dict[str, dict[str, Any]] = {}
    for ch in channels:
        if ch.address is None:
            continue  # a reply channel: its operations are its request's
        for party in ch.sends:
            _add(ops, _operation(ch, party, "send"))
        for party in ch.receives:
            _add(ops, _operation(ch, party, "receive"))
        for spec in _durables(ch.address):
            _add(ops, _operation(ch, _owner(spec), "receive", spec.durable))
        for party, pattern in SUBSCRIPTIONS:
            if _tokens_match(pattern, ch.address):
                _add(ops, _operation(ch, party, "receive"))
    return ops


def _add(ops: dict[str, dict[str, Any]], op: dict[str, Any]) -> None:
    key = f"{op['x-service']}.{op['action']}.{op['channel']['$ref'].rsplit('/', 1)[-1]}"
    if key in ops:
        raise ValueError(f"two operations {key}")
    ops[key] = op


def _message_models(channels: Iterable[_Channel]) -> dict[str, type[BaseModel]]:
    models: dict[str, type[BaseModel]] = {cls.__name__: cls for cls in EVENT_TYPES.values()}
    models.update({m.__name__: m for m in (BatchProgress, DeadLetter, BreakerStateChanged)})
    for api in API:
        models.update({api.request.__name__: api.request, api.reply.__name__: api.reply})
    named = {m for ch in channels for m in ch.messages}
    return {name: cls for name, cls in models.items() if name in named}


def _asyncapi_schema(node: Any) -> Any:
    """Pydantic's JSON Schema as an AsyncAPI Schema: a discriminator is the property's name."""
    if isinstance(node, dict):
        out = {k: _asyncapi_schema(v) for k, v in node.items()}
        found = out.get("discriminator")
        if isinstance(found, dict) and "propertyName" in found:  # (not a field named so)
            out["discriminator"] = found["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(v) for v in node]
    return node


def _messages(channels: list[_Channel], models: dict[str, type[BaseModel]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for ch in channels:
        for name in ch.messages:
            if name in out:
                continue
            model = models.get(name)
            schema = "Empty" if name == "StatusRequest" else name
            msg: dict[str, Any] = {
                "name": name,
                "summary": _summary(model) if model is not None else SCHEMAS[schema]["description"],
                "contentType": CONTENT_TYPE,
                "payload": _ref("components", "schemas", schema),
            }
            if ch.headers is not None:
                msg["headers"] = _ref("components", "schemas", ch.headers)
            out[name] = msg
    return out


def _schemas(models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    _, top = models_json_schema(
        [(m, "validation") for m in models.values()], ref_template="#/components/schemas/{model}"
    )
    schemas = {name: _asyncapi_schema(s) for name, s in sorted(top.get("$defs", {}).items())}
    return {**schemas, **SCHEMAS}


def build_asyncapi() -> dict[str, Any]:
    """The whole document, as plain data (dicts, lists, strings, numbers)."""
    channels = _channels()
    models = _message_models(channels)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "evalbus",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": (
                "Every subject of evalbus on NATS (JetStream streams, plain subscriptions and request/reply "
                "endpoints), generated from the contracts package by `python -m infra.asyncapi`. Each "
                "operation names, in `x-service`, the service that sends or receives (`client`: the evalbus "
                "CLI); a receive from a stream names its durable in `x-durable`; a channel kept by a stream "
                "names it in `x-stream`. Readers ignore unknown fields of a payload; a user's inputs refuse "
                "them (`additionalProperties: false`)."
            ),
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": {ch.id: _channel_doc(ch) for ch in channels},
        "operations": _operations(channels),
        "components": {"messages": _messages(channels, models), "schemas": _schemas(models)},
    }
