"""Defect 5: `evalbus run` must not believe a `batch.completed` body. On the open test server
anyone may publish one; the CLI takes it only as a cue to ask the recorder's API for the report."""

import asyncio
import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from contracts import subjects
from contracts.enums import BatchStatus
from contracts.events import BatchCompleted
from contracts.reports import BatchReport
from evalbus.stack import Stack

pytestmark = pytest.mark.e2e
N = 40


def forged_completion(batch_id: str) -> BatchCompleted:
    report = BatchReport.model_validate(
        {
            "batch_id": batch_id,
            "status": "completed",
            "model": "FORGED",
            "judge_model": "FORGED",
            "session_id": None,
            "experiment": None,
            "suite_name": "forged",
            "total": N,
            "completed": N,
            "failed": 0,
            "passed": N,
            "pass_rate": 1.0,
            "mean_score": 10.0,
            "criteria": [],
            "failures_by_category": {},
            "latency_p50_ms": None,
            "latency_p95_ms": None,
            "tokens_in": 0,
            "tokens_out": 0,
            "judge_tokens_in": 0,
            "judge_tokens_out": 0,
            "cost_usd": 0.0,
            "wall_time_s": 0.1,
            "created_at": datetime.now(UTC),
            "finished_at": datetime.now(UTC),
        }
    )
    return BatchCompleted(batch_id=batch_id, status=BatchStatus.COMPLETED, report=report)


async def test_run_ignores_a_forged_completion_and_prints_the_real_report(stack: Stack, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    batch_id = "b-forged-" + secrets.token_hex(3)
    suite = tmp_path / "suite.jsonl"
    suite.write_text("".join(json.dumps({"prompt": f"Where is order VL-{i}?"}) + "\n" for i in range(N)))
    nc = await nats.connect(stack.nats_url)
    forged = asyncio.Event()

    async def forge(msg: Msg) -> None:
        # The CLI subscribed before it published the start: it is listening now, the batch has
        # not run yet, so only a forgery can be "completed" at this point.
        if msg.subject.endswith("start.requested") and not forged.is_set():
            await nc.publish(
                subjects.batch_event(batch_id, "batch", "completed"), forged_completion(batch_id).to_json()
            )
            forged.set()

    await nc.subscribe(subjects.batch_all(batch_id), cb=forge)
    await nc.flush()
    try:
        run = await asyncio.to_thread(
            cli,
            "run",
            str(suite),
            "--model",
            "evalbus-fake",
            "--concurrency",
            "2",
            "--batch-id",
            batch_id,
            "--json",
            "--wait-timeout",
            "180",
        )
    finally:
        await nc.close()
    assert forged.is_set()
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["model"] == "evalbus-fake" and report["completed"] == N, report
    assert report["status"] == "completed"
