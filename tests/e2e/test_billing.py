"""Billed vs useful spend after forced redeliveries: the chat-runner is stopped (SIGSTOP) while it
holds the batch's prompts, some of them in model calls, past the ack wait, so they are all
redelivered. When it goes on, it finishes what it was doing (the answers sent to it while it was
stopped wait in its socket) and works on each redelivered copy again: a second call per prompt,
whose result is dropped as a repeat but whose bill is not. Every call the fake model answered is
billed, exactly: the ledger's tokens are the fake model's served tokens."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.inputs import BatchConfig, StartBatchRequested
from evalbus.client import publish_start, upload_suite
from evalbus.stack import Stack
from infra.nats_topology import apply_topology

pytestmark = pytest.mark.e2e
N = 30
ACK_WAIT_S = 3.0  # how soon a stopped chat-runner's messages are redelivered
LATENCY_MS = 300  # calls long enough that the chat-runner surely holds prompts when stopped


async def scalar(db: str, sql: str, **params: object) -> Any:
    engine = create_async_engine(db)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar()
    finally:
        await engine.dispose()


async def served(stack: Stack) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{stack.fake_model_port}/stats") as resp:
        return dict((await resp.json())["served"])


def evalbus(stack: Stack, *args: str) -> Any:
    env = dict(os.environ, EVALBUS_NATS_URL=stack.nats_url, EVALBUS_DATABASE_URL=stack.database_url)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "evalbus"), *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


async def wait_for(db: str, sql: str, want: object, timeout_s: float, **params: object) -> object:
    deadline = time.monotonic() + timeout_s
    while (got := await scalar(db, sql, **params)) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
    return got


async def settled(stack: Stack, batch_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The fake model's served counts once they stop moving and the ledger has caught up with them."""
    billed_sql = "SELECT coalesce(sum(tokens_in), 0) FROM model_calls WHERE batch_id = :b"
    deadline = time.monotonic() + timeout_s
    before: dict[str, Any] | None = None
    while True:
        now = await served(stack)
        billed = await scalar(stack.database_url, billed_sql, b=batch_id)
        if (now == before and billed == now["tokens_in"]) or time.monotonic() > deadline:
            return now
        before = now
        await asyncio.sleep(1.0)


async def test_billed_tokens_count_every_call_repeated_after_a_redelivery(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "billing")
    batch_id = "b-billing"
    try:
        await asyncio.to_thread(stack.start_servers)
        await apply_topology(stack.nats_url, ack_wait_s=ACK_WAIT_S)
        await asyncio.to_thread(stack.start_fake_model, {"latency_ms": str(LATENCY_MS)})
        stack.start_services()
        await asyncio.to_thread(stack.wait_healthy)
        suite = tmp_path / "suite.jsonl"
        suite.write_text("".join(json.dumps({"prompt": f"Where is order VL-{i}?"}) + "\n" for i in range(N)))
        cfg = BatchConfig(
            model="evalbus-fake", judge_model="evalbus-fake-judge", concurrency=2, judge_batch_size=4, timeout_s=60
        )
        nc = await nats.connect(stack.nats_url)
        start = StartBatchRequested(batch_id=batch_id, config=cfg, suite=await upload_suite(nc, batch_id, suite))
        await publish_start(nc, start)
        await nc.drain()
        db = stack.database_url
        responded = "SELECT count(*) FROM responses WHERE batch_id = :b"
        await wait_for(db, responded, 4, 60, b=batch_id)  # the rest are held, two calls at a time
        # Its calls in flight are answered while it is stopped; past the ack wait all it holds is
        # redelivered. Shorter than the calls' timeout, which would fail them when it goes on.
        stack.kill("chat_runner", signal.SIGSTOP)
        try:
            await asyncio.sleep(ACK_WAIT_S + 2)
        finally:
            stack.kill("chat_runner", signal.SIGCONT)
        status = "SELECT status FROM batches WHERE batch_id = :b"
        assert await wait_for(db, status, "completed", 120, b=batch_id) == "completed"

        # Every answer the fake model served is in the ledger (the stopped replica's bills, and
        # its calls for prompts it had fetched, may come after the batch's end).
        bill = await settled(stack, batch_id)
        calls = "SELECT count(*) FROM model_calls WHERE batch_id = :b"
        assert await scalar(db, calls, b=batch_id) == bill["chat"]["responses"] + bill["judge"]["responses"]

        rep = evalbus(stack, "report", batch_id)  # computed from the rows now
        print(f"served {bill}; useful {rep['tokens_in']}/{rep['tokens_out']}, judge {rep['judge_tokens_in']}")
        assert rep["completed"] == N
        assert rep["billed_tokens_in"] + rep["billed_judge_tokens_in"] == bill["tokens_in"]
        assert rep["billed_tokens_out"] + rep["billed_judge_tokens_out"] == bill["tokens_out"]
        assert (rep["billed_tokens_in"], rep["billed_tokens_out"]) == (
            bill["chat"]["tokens_in"],
            bill["chat"]["tokens_out"],
        )
        # The repeats were billed, not used: billed exceeds useful for the model under test.
        assert bill["chat"]["responses"] > N
        assert rep["billed_tokens_in"] > rep["tokens_in"] and rep["billed_tokens_out"] > rep["tokens_out"]
        assert rep["billed_judge_tokens_in"] == rep["judge_tokens_in"]  # the judge was not disturbed
        assert rep["billed_cost_usd"] > rep["cost_usd"]

        # `evalbus samples` shows each prompt's calls: the repeated ones have two chat calls.
        page = evalbus(stack, "samples", batch_id, "--per-page", "500")
        chat_calls = [sum(c["stage"] == "chat" for c in s["calls"]) for s in page["items"]]
        assert len(chat_calls) == N and min(chat_calls) >= 1
        assert sum(chat_calls) == bill["chat"]["responses"] and chat_calls.count(2) >= N // 2
        assert all(a["outcome"] == "ok" for s in page["items"] for c in s["calls"] for a in c["attempts"])
    finally:
        stack.stop()
        for p in (stack.data_dir / "logs").glob("*.log"):
            if "Traceback" in p.read_text():
                print(f"--- {p.name}\n{p.read_text()[-2500:]}")
