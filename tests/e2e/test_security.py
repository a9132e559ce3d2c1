"""Secrets stay out of events, rows and logs; the key goes to configured endpoints only;
injection probes in answers do not buy scores."""

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import nats
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.events import PromptQueued, PromptResponded
from contracts.inputs import BatchConfig
from contracts.topology import STREAMS
from evalbus.cli.common import EXIT_REJECTED
from evalbus.stack import Stack
from tests.factories import BatchEvents
from tests.scripted_model import ScriptedModel, ok, scripted_server

pytestmark = pytest.mark.e2e
SECRET = "sk-evalbus-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def stack(servers) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """Services holding an API key; a fake model that refuses calls without it and plays adversary."""
    st = Stack(servers.data_dir / "secure", nats_url=servers.nats_url, database_url=servers.database_url)
    st.start_fake_model({"api_key": SECRET, "adversarial": "true", "latency_ms": "2"})
    st.start_services(extra_env={"EVALBUS_API_KEY": SECRET, "EVALBUS_LOG_LEVEL": "DEBUG"})
    st.wait_healthy()
    try:
        yield st
    finally:
        st.stop()


def write_suite(path: Path, n: int) -> Path:
    lines = [json.dumps({"prompt": f"Question {i}: how do I reset my HomeHub Mini?"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


async def run_batch(cli: Callable[..., object], tmp_path: Path, n: int) -> tuple[str, dict[str, object]]:
    batch_id = "b-sec-" + secrets.token_hex(3)
    result = await asyncio.to_thread(
        cli,
        "run",
        str(write_suite(tmp_path / f"{batch_id}.jsonl", n)),
        "--model",
        "evalbus-fake",
        "--judge-model",
        "evalbus-fake-judge",
        "--batch-id",
        batch_id,
        "--json",
    )
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return batch_id, json.loads(result.stdout)  # type: ignore[attr-defined]


async def test_the_api_key_is_in_no_event_row_or_log_line(stack: Stack, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, report = await run_batch(cli, tmp_path, 20)
    assert report["completed"] == 20  # the fake refuses calls without the key: it was sent

    engine = create_async_engine(stack.database_url)
    try:
        async with engine.connect() as conn:
            tables = [
                r[0] for r in await conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
            ]
            for table in tables:
                dump = await conn.execute(text(f"SELECT coalesce(string_agg(t::text, ' '), '') FROM \"{table}\" t"))
                assert SECRET not in dump.scalar_one(), f"the key is in table {table}"
    finally:
        await engine.dispose()

    nc = await nats.connect(stack.nats_url)
    js = nc.jetstream()
    seen = 0
    for spec in STREAMS:
        info = await js.stream_info(spec.name)
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else []:
            try:
                msg = await js.get_msg(spec.name, seq)
            except Exception:
                continue
            seen += 1
            assert SECRET.encode() not in (msg.data or b""), f"the key is in {msg.subject}"
            assert SECRET not in json.dumps(msg.headers or {}), f"the key is in headers of {msg.subject}"
    await nc.close()
    assert seen > 20 * 4

    logs = list((stack.data_dir / "logs").glob("*.log"))
    assert logs and all(SECRET not in p.read_text() for p in logs)


async def test_injection_probes_do_not_get_the_scores_they_ask_for(stack: Stack, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Probes in answers travel the whole pipeline as data and are graded from the judge's fences.
    The low scores come from the fake judge's fixed probe list, so this checks the path, not a
    model's resistance; the judge's prompt construction is tested in tests/unit/judge/test_fencing.py."""
    batch_id, _ = await run_batch(cli, tmp_path, 60)
    engine = create_async_engine(stack.database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        """
                SELECT r.answer, j.criterion, j.score FROM responses r JOIN judgments j USING (prompt_id)
                WHERE r.batch_id = :b
                """
                    ),
                    {"b": batch_id},
                )
            ).all()
    finally:
        await engine.dispose()
    probed = [(a, c, s) for a, c, s in rows if "10/10" in a or '"judgments"' in a or a.rstrip().endswith(":")]
    assert probed, "the adversarial fake put no probe in any answer"
    assert all(score < 10 for _, _, score in probed)
    assert all(score <= 3 for _, c, score in probed if c in ("accuracy", "safety"))
    async with httpx.AsyncClient() as http:  # nothing was called without the key
        stats = (await http.get(stack.model_base_url.removesuffix("/v1") + "/stats")).json()
    assert stats["unauthorized"] == 0


@pytest.fixture
async def collector() -> AsyncIterator[ScriptedModel]:
    """A server of a client's own that would collect keys: records every request (its
    Authorization header too) and answers like a model, so a leaked call would succeed and be seen."""
    async with scripted_server(ok("thanks")) as col:
        yield col


async def first_event(stack: Stack, subject: str, publish: Callable[[nats.NATS], object]) -> dict[str, object]:
    """Subscribe to `subject`, publish, and return the first event seen there."""
    nc = await nats.connect(stack.nats_url)
    try:
        sub = await nc.subscribe(subject)
        await publish(nc)  # type: ignore[misc]
        msg = await sub.next_msg(timeout=60)
        return orjson.loads(msg.data)  # type: ignore[no-any-return]
    finally:
        await nc.close()


async def test_a_start_naming_an_unlisted_url_is_rejected_before_any_call(  # type: ignore[no-untyped-def]
    stack: Stack, cli, tmp_path: Path, collector: ScriptedModel
) -> None:
    suite = str(write_suite(tmp_path / "unlisted.jsonl", 3))
    url = collector.base_url
    for option, value, reason in [
        ("--base-url", url, "model endpoint: base URL " + url + " is not a configured endpoint"),
        ("--judge-base-url", url, "judge endpoint: base URL " + url + " is not a configured"),
        ("--endpoint", "elsewhere", "model endpoint: no endpoint named 'elsewhere'"),
        ("--judge-endpoint", "elsewhere", "judge endpoint: no endpoint named 'elsewhere'"),
    ]:
        out = await asyncio.to_thread(cli, "run", suite, "--model", "evalbus-fake", option, value, "--json")
        assert out.returncode == EXIT_REJECTED, (option, out.stdout, out.stderr)
        assert reason in json.loads(out.stdout)["reason"], (option, out.stdout)
    # The configured endpoint by its name or its URL (spelled with a trailing slash) still runs.
    ok = await asyncio.to_thread(
        cli, "run", suite, "--model", "evalbus-fake", "--base-url", stack.model_base_url + "/", "--json"
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["completed"] == 3, ok.stderr
    named = await asyncio.to_thread(cli, "run", suite, "--model", "evalbus-fake", "--endpoint", "default", "--json")
    assert named.returncode == 0 and json.loads(named.stdout)["completed"] == 3, named.stderr
    assert collector.seen == []


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "javascript:alert(1)", "gopher://127.0.0.1:70/x", "http://a b/v1", "unix:/run/x"]
)
async def test_non_http_base_urls_are_refused_by_the_cli_and_the_generator(  # type: ignore[no-untyped-def]
    stack: Stack, cli, tmp_path: Path, url: str
) -> None:
    suite = str(write_suite(tmp_path / "scheme.jsonl", 1))
    out = await asyncio.to_thread(cli, "run", suite, "--model", "evalbus-fake", "--base-url", url)
    assert out.returncode == EXIT_REJECTED and "invalid batch" in out.stderr, out.stderr
    # Published by hand, past the CLI: the generator's parse refuses it.
    batch_id = "b-url-" + secrets.token_hex(3)
    start = {
        "batch_id": batch_id,
        "config": {"model": "evalbus-fake", "judge_base_url": url},
        "suite": {"cases": [{"prompt": "hi"}]},
    }

    async def publish(nc: nats.NATS) -> None:
        await nc.jetstream().publish(subjects.start_requested(batch_id), json.dumps(start).encode())

    rejected = await first_event(stack, subjects.batch_event(batch_id, "batch", "rejected"), publish)
    assert "judge_base_url" in str(rejected["reason"]), rejected


async def test_forged_prompt_events_naming_an_unlisted_url_fail_without_a_call(  # type: ignore[no-untyped-def]
    stack: Stack, collector: ScriptedModel
) -> None:
    """The chat-runner and the judge check again: an internal event that names a URL of the
    sender's choosing becomes a failure, not a call carrying the key."""
    batch_id = "b-forged-" + secrets.token_hex(3)
    config = BatchConfig(model="evalbus-fake", base_url=collector.base_url, judge_base_url=collector.base_url)
    batch = BatchEvents(batch_id, 2, config=config)
    queued = batch.queued(0)
    responded = batch.responded(1, "an answer")
    forged: list[tuple[PromptQueued | PromptResponded, str]] = [(queued, "chat"), (responded, "judge")]
    for evt, stage in forged:

        async def publish(nc: nats.NATS, evt: PromptQueued | PromptResponded = evt) -> None:
            await nc.jetstream().publish(evt.subject, evt.to_json())

        failed = await first_event(stack, subjects.batch_event(batch_id, "prompt", "failed"), publish)
        assert (failed["prompt_id"], failed["stage"], failed["category"]) == (evt.prompt_id, stage, "invalid_input")
        assert "is not a configured endpoint" in str(failed["error"]) and SECRET not in str(failed)
    assert collector.seen == []
