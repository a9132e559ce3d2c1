"""Secrets stay out of events, rows and logs; injection probes in answers do not buy scores."""

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.topology import STREAMS
from evalbus.stack import Stack

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
