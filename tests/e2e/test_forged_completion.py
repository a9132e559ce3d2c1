"""Defect 5: `evalbus run` must not believe a `batch.completed` body. On the open test server
anyone may publish one; the CLI takes it only as a cue to ask the recorder's API for the report."""

import asyncio
import json
import secrets
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from contracts import subjects
from contracts.enums import BatchStatus
from contracts.events import BatchCompleted
from evalbus.stack import Stack
from tests.factories import BatchEvents

pytestmark = pytest.mark.e2e
N = 40


def forged_completion(batch_id: str) -> BatchCompleted:
    report = BatchEvents(batch_id, N, suite_name="forged").report(
        model="FORGED", judge_model="FORGED", mean_score=10.0, wall_time_s=0.1
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
