"""The AsyncAPI document: the committed file is the one the contracts build, and it is whole."""

from pathlib import Path
from typing import Any

import yaml

from contracts import subjects, topology
from contracts.asyncapi import CLIENT, PARTIES, build_asyncapi
from contracts.events import EVENT_TYPES
from contracts.services import NAMES
from infra import asyncapi as writer

DOC = build_asyncapi()


def _resolve(ref: str) -> Any:
    node: Any = DOC
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _channel_of(op: dict[str, Any]) -> str:
    return str(op["channel"]["$ref"]).rsplit("/", 1)[-1]


def test_the_committed_document_is_current() -> None:
    assert writer.DEFAULT_PATH.read_text(encoding="utf-8") == writer.render(), "run `python -m infra.asyncapi`"
    assert writer.main(["--check"]) == 0


def test_check_fails_on_a_stale_file_and_writing_makes_it_current(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.yaml"
    out.write_text("asyncapi: 2.6.0\n")
    assert writer.main(["--check", "--out", str(out)]) == 1
    assert writer.main(["--out", str(out)]) == 0
    assert writer.main(["--check", "--out", str(out)]) == 0
    assert yaml.safe_load(out.read_text()) == DOC


def test_it_is_an_asyncapi_3_document() -> None:
    assert DOC["asyncapi"] == "3.0.0"
    assert set(DOC) == {"asyncapi", "info", "defaultContentType", "channels", "operations", "components"}
    assert DOC["info"]["title"] and DOC["info"]["version"]
    for op in DOC["operations"].values():
        assert op["action"] in ("send", "receive")
        assert set(op) <= {"action", "channel", "summary", "messages", "reply", "x-service", "x-durable"}


def test_every_event_type_has_its_channel() -> None:
    addresses = {ch["address"]: ch for ch in DOC["channels"].values()}
    for (entity, verb), cls in EVENT_TYPES.items():
        channel = addresses[subjects.batch_event("{batch_id}", entity, verb)]
        assert list(channel["messages"]) == [cls.__name__]
        assert channel["x-stream"] == subjects.STREAM_EVENTS
        assert "batch_id" in channel["parameters"]


def test_every_channel_has_operations_and_each_names_a_service() -> None:
    used: dict[str, list[dict[str, Any]]] = {name: [] for name in DOC["channels"]}
    for op in DOC["operations"].values():
        assert op["x-service"] in PARTIES
        used[_channel_of(op)].append(op)
        if "reply" in op:
            used[str(op["reply"]["channel"]["$ref"]).rsplit("/", 1)[-1]].append(op)
    assert all(used.values()), [name for name, ops in used.items() if not ops]
    for name, channel in DOC["channels"].items():
        if channel["address"] is None:
            continue  # a reply, to the requester's inbox
        actions = {op["action"] for op in used[name] if _channel_of(op) == name}
        assert "receive" in actions, name
        if not channel["address"].startswith("$JS."):  # nats-server sends its advisories itself
            assert "send" in actions, name


def test_the_pipeline_reads_as_designed() -> None:
    def parties(channel: str, action: str) -> set[str]:
        return {
            op["x-service"]
            for op in DOC["operations"].values()
            if _channel_of(op) == channel and op["action"] == action
        }

    assert parties("start.requested", "send") == {CLIENT}
    assert parties("start.requested", "receive") == {"generator", "recorder"}
    assert parties("prompt.queued", "receive") == {"chat-runner", "recorder"}
    assert parties("prompt.responded", "send") == {"chat-runner", "recorder"}
    assert parties("prompt.judged", "receive") == {"scorer", "recorder"}
    assert parties("prompt.failed", "send") == {"chat-runner", "judge", "scorer"}
    assert parties("batch.completed", "receive") == {"recorder", CLIENT}
    assert parties("progress", "send") == {"recorder"}
    assert parties("dlq", "send") == set(NAMES)
    assert parties("breaker", "receive") == {"recorder"}
    assert parties("ctl.status", "receive") == set(NAMES)
    assert parties("api.batch.samples", "receive") == {"recorder"}


def test_every_durable_is_an_operation() -> None:
    durables = {op.get("x-durable") for op in DOC["operations"].values()}
    assert {c.durable for c in topology.CONSUMERS} <= durables


def test_every_reference_resolves_and_every_parameter_is_declared() -> None:
    for ref in _refs(DOC):
        assert ref.startswith("#/"), ref
        _resolve(ref)
    for name, channel in DOC["channels"].items():
        address = channel["address"] or ""
        params = {t[1:-1] for t in address.split(".") if t.startswith("{")}
        assert params == set(channel.get("parameters", {})), name


def test_payload_schemas_keep_the_wire_names_and_say_which_score_is_which() -> None:
    scored = DOC["components"]["schemas"]["PromptScored"]["properties"]
    assert "1-10" in scored["overall_score"]["description"]
    assert "0-1" in scored["verdict_score"]["description"]
    report = DOC["components"]["schemas"]["BatchReport"]["properties"]
    assert "1-10" in report["mean_score"]["description"]
    # A discriminated union is written the AsyncAPI way: the property's name.
    items = DOC["components"]["schemas"]["PromptQueued"]["properties"]["references"]["items"]
    assert items["discriminator"] == "kind"
