"""Tracing across the five processes (EVALBUS_TRACING=console: each span a line of JSON in the
service's log): one prompt's spans, in every service that handled it, share one trace id."""

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalbus.stack import Stack
from tests.e2e.test_pipeline import write_suite

pytestmark = pytest.mark.e2e
N = 6


@pytest.fixture(scope="module")
def stack(servers) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    st = Stack(servers.data_dir / "e2e-tracing", nats_url=servers.nats_url, database_url=servers.database_url)
    st.start_fake_model({"latency_ms": "5"})
    st.start_services(extra_env={"EVALBUS_TRACING": "console"})
    try:
        st.wait_healthy()
        yield st
    finally:
        st.stop()


def spans_in(log: Path) -> list[dict]:  # type: ignore[type-arg]
    spans = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith('{"name"'):
            spans.append(json.loads(line))
    return spans


async def test_each_prompt_is_one_trace_across_the_services(stack: Stack, cli, tmp_path: Path) -> None:
    batch_id = "b-trace-" + secrets.token_hex(3)
    suite = write_suite(tmp_path / "suite.jsonl", N)
    result = await asyncio.to_thread(
        cli, "run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--json"
    )
    assert result.returncode == 0, result.stderr
    stack.stop_services()  # a stopping service exports the spans it still holds

    services_by_trace: dict[str, set[str]] = {}
    traces_by_prompt: dict[str, set[str]] = {}
    for log in (stack.data_dir / "logs").glob("*.log"):
        for span in spans_in(log):
            attributes = span.get("attributes") or {}
            if attributes.get("evalbus.batch_id") != batch_id:
                continue
            trace_id = span["context"]["trace_id"]
            services_by_trace.setdefault(trace_id, set()).add(span["resource"]["attributes"]["service.name"])
            if "evalbus.prompt_id" in attributes:
                traces_by_prompt.setdefault(attributes["evalbus.prompt_id"], set()).add(trace_id)
    assert len(traces_by_prompt) == N
    assert all(len(ids) == 1 for ids in traces_by_prompt.values()), traces_by_prompt
    assert len(set.union(*traces_by_prompt.values())) == N  # a trace per prompt, not one per batch
    everyone = {f"evalbus-{name}" for name in ("generator", "chat-runner", "judge", "scorer", "recorder")}
    for ids in traces_by_prompt.values():
        assert services_by_trace[next(iter(ids))] == everyone
