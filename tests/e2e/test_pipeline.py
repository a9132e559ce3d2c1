"""A whole evaluation batch through five real processes, NATS JetStream and PostgreSQL."""

import asyncio
import itertools
import json
import secrets
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.events import BatchCompleted
from contracts.reports import BatchProgress
from evalbus.stack import Stack
from infra.embedded import wait_for_port
from infra.processes import fake_model_argv

pytestmark = pytest.mark.e2e
TOPICS = ["billing", "shipping", "returns", "account", "technical"]


def write_suite(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            case = {
                "prompt": f"Case {i}: my order VL-{10000 + i} about {TOPICS[i % 5]} has a problem, what can I do?",
                "expected": "Apologise, check the order and offer a concrete fix.",
                "metadata": {"topic": TOPICS[i % 5], "difficulty": ["easy", "medium", "hard"][i % 3]},
            }
            fh.write(json.dumps(case) + "\n")
    return path


async def count(database_url: str, sql: str, batch_id: str) -> int:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            return int((await conn.execute(text(sql), {"b": batch_id})).scalar_one())
    finally:
        await engine.dispose()


async def test_a_200_prompt_batch_is_recorded_whole(stack: Stack, cli, tmp_path: Path) -> None:
    batch_id = "b-e2e-" + secrets.token_hex(3)
    suite = write_suite(tmp_path / "suite.jsonl", 200)
    nc = await nats.connect(stack.nats_url)
    snapshots: list[BatchProgress] = []

    async def on_progress(msg: nats.aio.msg.Msg) -> None:
        snapshots.append(BatchProgress.model_validate_json(msg.data))

    await nc.subscribe(subjects.progress(batch_id), cb=on_progress)
    result = await asyncio.to_thread(
        cli,
        "run",
        str(suite),
        "--model",
        "evalbus-fake",
        "--judge-model",
        "evalbus-fake-judge",
        "--batch-id",
        batch_id,
        "--concurrency",
        "32",
        "--experiment",
        "e2e",
        "--json",
    )
    await asyncio.sleep(0.3)
    await nc.drain()
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "completed" and report["total"] == 200 and report["completed"] == 200
    assert report["session_id"].startswith("batch-evalbus-fake-") and report["experiment"] == "e2e"
    assert [c["criterion"] for c in report["criteria"]] == [
        "helpfulness",
        "accuracy",
        "clarity",
        "safety",
        "completeness",
    ]
    assert all(c["judged"] == 200 and 1 <= c["mean_score"] <= 10 for c in report["criteria"])
    assert report["tokens_in"] > 0 and report["tokens_out"] > 0 and report["cost_usd"] > 0
    assert 0 < report["latency_p50_ms"] <= report["latency_p95_ms"]

    db = stack.database_url
    assert await count(db, "SELECT count(*) FROM prompts WHERE batch_id = :b", batch_id) == 200
    assert await count(db, "SELECT count(*) FROM responses WHERE batch_id = :b", batch_id) == 200
    assert await count(db, "SELECT count(*) FROM judgments WHERE batch_id = :b", batch_id) == 200 * 5
    assert await count(db, "SELECT count(*) FROM scores WHERE batch_id = :b", batch_id) == 200
    assert await count(db, "SELECT count(*) FROM failures WHERE batch_id = :b", batch_id) == 0
    # every prompt has each of its rows (not just the right totals)
    assert (
        await count(
            db,
            """
        SELECT count(*) FROM prompts p WHERE p.batch_id = :b AND (
          NOT EXISTS (SELECT 1 FROM responses r WHERE r.prompt_id = p.prompt_id)
          OR NOT EXISTS (SELECT 1 FROM scores s WHERE s.prompt_id = p.prompt_id)
          OR (SELECT count(*) FROM judgments j WHERE j.prompt_id = p.prompt_id) <> 5)""",
            batch_id,
        )
        == 0
    )
    # the batch row's totals equal the rows
    assert await count(db, "SELECT completed_prompts FROM batches WHERE batch_id = :b", batch_id) == 200
    assert await count(db, "SELECT passed_prompts FROM batches WHERE batch_id = :b", batch_id) == await count(
        db, "SELECT count(*) FROM scores WHERE batch_id = :b AND passed", batch_id
    )
    assert await count(db, "SELECT tokens_in FROM batches WHERE batch_id = :b", batch_id) == await count(
        db, "SELECT sum(tokens_in) FROM responses WHERE batch_id = :b", batch_id
    )

    # the completed event is in the stream for anyone who subscribes later
    nc = await nats.connect(stack.nats_url)
    last = await nc.jetstream().get_last_msg(
        subjects.STREAM_EVENTS, subjects.batch_event(batch_id, "batch", "completed")
    )
    await nc.drain()
    assert BatchCompleted.model_validate_json(last.data).report.completed == 200

    assert snapshots and snapshots[-1].done == 200
    for before, after in itertools.pairwise(snapshots):
        assert after.done >= before.done and after.responded >= before.responded, "progress went backwards"
    assert stack.check_alive() == []


async def test_status_and_report_survive_a_restart_of_every_service(stack: Stack, cli, tmp_path: Path) -> None:
    batch_id = "b-rst-" + secrets.token_hex(3)
    suite = write_suite(tmp_path / "small.jsonl", 20)
    run = await asyncio.to_thread(cli, "run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--json")
    assert run.returncode == 0, run.stderr
    services = [name for name in stack.procs if name != "fake-model"]
    await asyncio.to_thread(stack.stop_services)
    for name in services:  # each with the command and settings it had
        stack.restart(name)
    await asyncio.to_thread(stack.wait_healthy)
    status = await asyncio.to_thread(cli, "status", batch_id, "--json")
    assert status.returncode == 0, status.stderr
    snap = json.loads(status.stdout)
    assert (snap["status"], snap["total"], snap["scored"] + snap["failed"]) == ("completed", 20, 20)
    report = await asyncio.to_thread(cli, "report", batch_id)
    assert report.returncode == 0 and "pass rate" in report.stdout and batch_id in report.stdout
    missing = await asyncio.to_thread(cli, "status", "b-no-such-batch")
    assert missing.returncode == 1 and "no batch" in missing.stderr


async def test_the_same_start_twice_runs_one_batch(stack: Stack, cli, tmp_path: Path) -> None:
    batch_id = "b-twice-" + secrets.token_hex(3)
    suite = write_suite(tmp_path / "twice.jsonl", 10)
    first = await asyncio.to_thread(cli, "run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--json")
    assert first.returncode == 0, first.stderr
    # the same command again, past JetStream's dedup (new event id): the generator's record stops it
    second = await asyncio.to_thread(
        cli, "run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--json", "--wait-timeout", "3"
    )
    assert second.returncode != 0
    assert await count(stack.database_url, "SELECT count(*) FROM prompts WHERE batch_id = :b", batch_id) == 10
    assert await count(stack.database_url, "SELECT count(*) FROM responses WHERE batch_id = :b", batch_id) == 10


async def test_cancel_stops_pending_prompts_and_ends_the_batch_cancelled(stack: Stack, cli, tmp_path: Path) -> None:
    batch_id = "b-cancel-" + secrets.token_hex(3)
    suite = write_suite(tmp_path / "long.jsonl", 400)
    nc = await nats.connect(stack.nats_url)
    first = asyncio.Event()

    async def on_progress(msg: nats.aio.msg.Msg) -> None:
        if BatchProgress.model_validate_json(msg.data).responded > 0:
            first.set()

    await nc.subscribe(subjects.progress(batch_id), cb=on_progress)
    run = asyncio.create_task(
        asyncio.to_thread(
            cli, "run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--concurrency", "1", "--json"
        )
    )
    await asyncio.wait_for(first.wait(), 60)
    # Held while the cancel is on its way, so that on a loaded machine the batch cannot finish
    # before the CLI process has started (the chat-runner has taken at most its slots' worth).
    stack.kill("chat_runner", signal.SIGSTOP)
    try:
        cancel = await asyncio.to_thread(cli, "cancel", batch_id, "--reason", "wrong model")
    finally:
        stack.kill("chat_runner", signal.SIGCONT)
    assert cancel.returncode == 0, cancel.stderr
    result = await run
    await nc.drain()
    report = json.loads(result.stdout)
    assert report["status"] == "cancelled"
    assert report["completed"] + report["failed"] == 400
    assert report["failures_by_category"].get("cancelled", 0) > 0
    responded = await count(stack.database_url, "SELECT count(*) FROM responses WHERE batch_id = :b", batch_id)
    assert responded < 400  # the model was not called for what was cancelled


async def test_resume_finishes_a_batch_whose_events_were_lost(stack: Stack, cli, tmp_path: Path) -> None:
    batch_id = "b-lost-" + secrets.token_hex(3)
    n = 30
    stack.kill("chat_runner")  # nobody takes the prompts ...
    try:
        nc = await nats.connect(stack.nats_url)
        js = nc.jetstream()
        run = asyncio.create_task(
            asyncio.to_thread(
                cli,
                "run",
                str(write_suite(tmp_path / "lost.jsonl", n)),
                "--model",
                "evalbus-fake",
                "--batch-id",
                batch_id,
                "--json",
                "--wait-timeout",
                "120",
            )
        )
        for _ in range(100):
            if await count(stack.database_url, "SELECT count(*) FROM prompts WHERE batch_id = :b", batch_id) == n:
                break
            await asyncio.sleep(0.1)
        # ... and the stream loses them (an operator purge, a lost R1 disk): only PostgreSQL has them
        await js.purge_stream(subjects.STREAM_EVENTS, subject=subjects.batch_event(batch_id, "prompt", "queued"))
    finally:
        stack.restart("chat_runner")
    await asyncio.sleep(2)
    assert await count(stack.database_url, "SELECT count(*) FROM responses WHERE batch_id = :b", batch_id) == 0
    resumed = await asyncio.to_thread(cli, "resume", batch_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["by_event"] == {"prompt.queued": n}
    result = await run
    await nc.drain()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["completed"] == n
    assert await count(stack.database_url, "SELECT count(*) FROM responses WHERE batch_id = :b", batch_id) == n
    again = await asyncio.to_thread(cli, "resume", batch_id, "--json")  # a finished batch has nothing to re-drive
    assert json.loads(again.stdout)["redriven"] == 0


async def test_every_service_reports_healthy_and_beats(stack: Stack, cli) -> None:
    health = await asyncio.to_thread(cli, "health", "--json")
    assert health.returncode == 0, health.stdout + health.stderr
    statuses = json.loads(health.stdout)
    assert sorted(s["service"] for s in statuses) == ["chat-runner", "generator", "judge", "recorder", "scorer"]
    assert all(s["connected"] and all(c["alive"] and c["bound"] for c in s["consumers"]) for s in statuses)
    env_dir = {"EVALBUS_HEARTBEAT_DIR": str(stack.data_dir / "heartbeats")}
    alive = await asyncio.to_thread(cli, "alive", "judge", env=env_dir)
    assert alive.returncode == 0, alive.stderr
    stack.kill("judge")
    try:
        down = await asyncio.to_thread(cli, "health", "--json")
        assert down.returncode == 1
        assert not next(s for s in json.loads(down.stdout) if s["service"] == "judge")["healthy"]
        stale = await asyncio.to_thread(cli, "alive", "judge", "--max-age", "0.01", env=env_dir)
        assert stale.returncode == 1
    finally:
        stack.restart("judge")


async def test_a_failing_endpoint_opens_its_breaker_and_only_the_batch_using_it_counts_it(
    stack: Stack, cli, tmp_path: Path, failing_endpoint: str
) -> None:
    port = urlsplit(failing_endpoint).port  # a configured endpoint of the stack, no server on it yet
    assert port is not None
    stack.spawn("failing-model", [*fake_model_argv(port), "--error-rate-500", "1"])
    await asyncio.to_thread(wait_for_port, port, 30)
    sick, well = (f"b-{name}-{secrets.token_hex(3)}" for name in ("sick", "well"))
    nc = await nats.connect(stack.nats_url)
    well_snapshots: list[BatchProgress] = []

    async def on_progress(msg: nats.aio.msg.Msg) -> None:
        well_snapshots.append(BatchProgress.model_validate_json(msg.data))

    await nc.subscribe(subjects.progress(well), cb=on_progress)

    def run(batch_id: str, suite: Path, *options: str) -> subprocess.CompletedProcess[str]:
        return cli("run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--json", *options)

    async def failing_meanwhile() -> subprocess.CompletedProcess[str]:
        # Started once the healthy batch runs (its first progress snapshot), so the failing
        # endpoint's breaker opens inside the healthy batch's time window.
        for _ in range(600):
            if well_snapshots:
                break
            await asyncio.sleep(0.05)
        suite = write_suite(tmp_path / "failing.jsonl", 12)
        options = ("--base-url", failing_endpoint, "--retries", "0", "--concurrency", "4")
        return await asyncio.to_thread(run, sick, suite, *options)

    try:
        healthy, failing = await asyncio.gather(
            # On the stack's own fake model, one call at a time: long enough to outlast the other.
            asyncio.to_thread(run, well, write_suite(tmp_path / "healthy.jsonl", 300), "--concurrency", "1"),
            failing_meanwhile(),
        )
    finally:
        stack.kill("failing-model")
        await nc.drain()
    report = json.loads(failing.stdout)
    assert failing.returncode == 1, failing.stderr  # every prompt failed
    assert report["status"] == "failed" and report["failures_by_category"] == {"server_error": 12}
    assert report["breaker_openings"] >= 1
    well_report = json.loads(healthy.stdout)
    assert healthy.returncode == 0 and well_report["completed"] == 300
    # The failing endpoint's breaker opened while the healthy batch ran (a count by time window
    # would give it those openings), yet the healthy batch shows none of them.
    during = await count(
        stack.database_url,
        "SELECT count(*) FROM breaker_events e, batches b WHERE b.batch_id = :b AND e.new_state = 'open'"
        " AND e.occurred_at BETWEEN b.accepted_at AND b.finished_at",
        well,
    )
    assert during >= 1
    assert well_report["breaker_openings"] == 0
    assert well_snapshots and all(s.breakers_open == [] for s in well_snapshots)
