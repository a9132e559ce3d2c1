"""Each service's Prometheus /metrics, scraped over HTTP from the five running processes, against a
batch's counts; and with tracing off, the messages carry no trace headers."""

import asyncio
import json
import secrets
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contracts import subjects
from contracts.topology import CHAT_RUNNER_QUEUED, JUDGE_RESPONDED, RECORDER_EVENTS, SCORER_JUDGED
from evalbus.stack import Stack
from infra.embedded import free_port
from infra.processes import SERVICES
from tests.e2e.test_pipeline import write_suite

pytestmark = pytest.mark.e2e
N = 24
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_run(n: int) -> int:
    """The first of `n` consecutive free loopback ports."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {n} consecutive free ports")


@pytest.fixture(scope="module")
def stack(servers) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """The e2e stack, with metrics on: EVALBUS_METRICS_PORT is the first port, one per process."""
    st = Stack(servers.data_dir / "e2e-metrics", nats_url=servers.nats_url, database_url=servers.database_url)
    st.start_fake_model({"latency_ms": "5", "jitter_ms": "5"})
    st.start_services(extra_env={"EVALBUS_METRICS_PORT": str(free_run(len(SERVICES)))})
    try:
        st.wait_healthy()
        yield st
    finally:
        st.stop()


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def scrape_all(stack: Stack) -> dict[str, Samples]:
    return {name: scrape(stack.metrics_ports[name]) for name in SERVICES}


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def consumed(samples: Samples, durable: str, kind: str) -> float:
    return get(samples, "evalbus_events_consumed_total", durable=durable, kind=kind)


def published(samples: Samples, kind: str) -> float:
    return get(samples, "evalbus_events_published_total", kind=kind)


async def test_metrics_count_what_the_batch_did(stack: Stack, cli, tmp_path: Path) -> None:
    assert sorted(stack.metrics_ports) == sorted(SERVICES) and len(set(stack.metrics_ports.values())) == len(SERVICES)
    before = scrape_all(stack)
    batch_id = "b-metrics-" + secrets.token_hex(3)
    suite = write_suite(tmp_path / "suite.jsonl", N)
    result = await asyncio.to_thread(
        cli, "run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--concurrency", "8", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["completed"] == N

    def delta(service: str, name: str, **labels: str) -> float:
        return get(after[service], name, **labels) - get(before[service], name, **labels)

    # A counter is raised right after its publish is acknowledged: give the last ones a moment.
    deadline = time.monotonic() + 15
    while True:
        after = scrape_all(stack)
        if (
            delta("recorder", "evalbus_events_published_total", kind="batch.completed") >= 1
            or time.monotonic() > deadline
        ):
            break
        await asyncio.sleep(0.2)

    gen, chat, judge, scorer, rec = (after[s] for s in ("generator", "chat_runner", "judge", "scorer", "recorder"))
    assert (
        delta("generator", "evalbus_events_consumed_total", durable="generator-start-requested", kind="start.requested")
        == 1
    )
    assert delta("generator", "evalbus_events_published_total", kind="prompt.queued") == N
    assert delta("generator", "evalbus_events_published_total", kind="batch.accepted") == 1
    assert (
        delta("chat_runner", "evalbus_events_consumed_total", durable=CHAT_RUNNER_QUEUED.durable, kind="prompt.queued")
        == N
    )
    assert (
        delta("chat_runner", "evalbus_messages_handled_total", durable=CHAT_RUNNER_QUEUED.durable, outcome="acked") == N
    )
    assert delta("chat_runner", "evalbus_handler_seconds_count", durable=CHAT_RUNNER_QUEUED.durable) == N
    assert delta("chat_runner", "evalbus_events_published_total", kind="prompt.responded") == N
    model_url = stack.model_base_url
    assert delta("chat_runner", "evalbus_model_calls_total", endpoint=model_url, outcome="ok") == N
    assert delta("chat_runner", "evalbus_model_tokens_total", endpoint=model_url, direction="in") == report["tokens_in"]
    assert (
        delta("chat_runner", "evalbus_tokens_total", kind="prompt.responded", direction="out") == report["tokens_out"]
    )
    assert get(chat, "evalbus_breaker_state", endpoint=model_url) == 0
    assert (
        delta("judge", "evalbus_events_consumed_total", durable=JUDGE_RESPONDED.durable, kind="prompt.responded") == N
    )
    assert delta("judge", "evalbus_events_published_total", kind="prompt.judged") == N
    assert delta("judge", "evalbus_tokens_total", kind="prompt.judged", direction="in") == report["judge_tokens_in"]
    spent = delta("chat_runner", "evalbus_cost_usd_total", kind="prompt.responded") + delta(
        "judge", "evalbus_cost_usd_total", kind="prompt.judged"
    )
    assert spent == pytest.approx(report["cost_usd"], rel=1e-3)  # the report rounds it
    assert delta("scorer", "evalbus_events_consumed_total", durable=SCORER_JUDGED.durable, kind="prompt.judged") == N
    assert delta("scorer", "evalbus_events_published_total", kind="prompt.scored") == N
    for kind in ("prompt.queued", "prompt.responded", "prompt.judged", "prompt.scored"):
        assert delta("recorder", "evalbus_events_consumed_total", durable=RECORDER_EVENTS.durable, kind=kind) >= N
    assert delta("recorder", "evalbus_events_published_total", kind="batch.completed") == 1
    for samples in (gen, chat, judge, scorer, rec):
        assert get(samples, "evalbus_dead_letters_total") == 0  # no unlabelled family: a sanity check of the parse
        assert any(name == "process_cpu_seconds_total" for name, _ in samples)
    # Lag gauges, read from JetStream, for every durable of the service.
    assert ("evalbus_consumer_pending", frozenset({("durable", CHAT_RUNNER_QUEUED.durable)})) in chat
    assert ("evalbus_consumer_ack_pending", frozenset({("durable", RECORDER_EVENTS.durable)})) in rec


async def test_with_tracing_off_events_carry_only_their_id(stack: Stack) -> None:
    nc = await nats.connect(stack.nats_url)
    try:
        js = nc.jetstream()
        msg = await js.get_last_msg(subjects.STREAM_EVENTS, subjects.any_batch("prompt", "scored"))
        assert msg.headers is not None and "Nats-Msg-Id" in msg.headers
        assert not {"traceparent", "tracestate"} & set(msg.headers)
    finally:
        await nc.close()
