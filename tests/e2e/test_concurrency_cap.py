"""A batch's `concurrency` is one cap for every replica of chat-runner and judge together, held
through the KV leases, including while a replica holding slots is killed (its leases expire)."""

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from evalbus.stack import Stack

pytestmark = pytest.mark.e2e
CAP = 3
N = 60


@pytest.fixture(scope="module")
def replicated(servers) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    st = Stack(servers.data_dir / "e2e-leases", nats_url=servers.nats_url, database_url=servers.database_url)
    # Slow enough answers that every replica has calls waiting for a slot the whole time.
    st.start_fake_model({"latency_ms": "120", "jitter_ms": "60"})
    st.start_services(replicas={"chat_runner": 2, "judge": 2}, extra_env={"EVALBUS_JUDGE_LINGER_MS": "5"})
    st.wait_healthy()
    try:
        yield st
    finally:
        st.stop()


def write_suite(path: Path, n: int) -> Path:
    cases = ({"prompt": f"Case {i}: order VL-{10000 + i} arrived damaged, what can I do?"} for i in range(n))
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


def stats(st: Stack) -> dict[str, int]:
    found: dict[str, int] = httpx.get(f"http://127.0.0.1:{st.fake_model_port}/stats", timeout=5).json()
    return found


def run_batch(st: Stack, suite: Path, batch_id: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EVALBUS_NATS_URL=st.nats_url, EVALBUS_DATABASE_URL=st.database_url)
    argv = [str(Path(sys.executable).parent / "evalbus"), "run", str(suite), "--model", "evalbus-fake"]
    argv += ["--judge-model", "evalbus-fake-judge", "--batch-id", batch_id, "--concurrency", str(CAP), "--json"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


async def test_two_chat_runners_and_two_judges_share_one_cap_through_a_kill(replicated: Stack, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "suite.jsonl", N)
    batch = asyncio.create_task(asyncio.to_thread(run_batch, replicated, suite, "b-cap-" + secrets.token_hex(3)))
    while stats(replicated)["chat"]["ok"] < N // 4:  # a quarter answered: every replica is busy
        assert not batch.done(), batch.result().stderr
        await asyncio.sleep(0.05)
    replicated.kill("chat_runner-2", signal.SIGKILL)  # with slots held and prompts in hand
    peak_after_kill = 0
    while not batch.done():
        peak_after_kill = max(peak_after_kill, stats(replicated)["in_flight"])
        await asyncio.sleep(0.02)
    result = batch.result()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["completed"] == N  # every prompt terminal, none failed
    final = stats(replicated)
    assert final["peak_in_flight"] == CAP  # used to the full, and never above, kill included
    assert peak_after_kill <= CAP
    assert final["chat"]["ok"] >= N  # answers of the killed replica's prompts may be asked again
    logs = replicated.data_dir / "logs"
    crashed = [p.name for p in logs.glob("*.log") if p.name != "chat_runner-2.log" and "Traceback" in p.read_text()]
    assert crashed == []
