"""The recorder's writes and reports against a real PostgreSQL."""

import secrets

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.base import Event
from contracts.enums import BatchStatus, FailureCategory, Stage
from contracts.events import (
    BatchAccepted,
    BatchCompleted,
    BatchRejected,
    CriterionJudgment,
    PromptFailed,
    PromptJudged,
    PromptQueued,
    PromptResponded,
    PromptScored,
    Usage,
)
from contracts.inputs import BatchConfig, ChatMessage
from services.recorder import reporting
from services.recorder.repository import record, store_final
from services.recorder.tracker import Tracker
from services.runtime.messaging.publishing import JetStreamPublisher

pytestmark = pytest.mark.integration
CFG = BatchConfig(model="m", criteria=["accuracy", "clarity"])


def batch_events(batch_id: str, n: int, fail_every: int = 4) -> list[Event]:
    events: list[Event] = [BatchAccepted(batch_id=batch_id, config=CFG, suite_name="s", total_prompts=n)]
    for i in range(n):
        pid = f"{batch_id}-{i:06d}"
        msgs = [ChatMessage(role="user", content=f"q{i}")]
        events.append(PromptQueued(batch_id=batch_id, prompt_id=pid, index=i, messages=msgs, config=CFG))
        if fail_every and i % fail_every == 0:
            events.append(
                PromptFailed(
                    batch_id=batch_id,
                    prompt_id=pid,
                    index=i,
                    stage=Stage.CHAT,
                    category=FailureCategory.TIMEOUT,
                    error="slow",
                    attempts=3,
                )
            )
            continue
        events.append(
            PromptResponded(
                batch_id=batch_id,
                prompt_id=pid,
                index=i,
                messages=msgs,
                answer="a",
                model="m",
                usage=Usage(tokens_in=10, tokens_out=20, latency_ms=100 + i, cost_usd=0.001),
                config=CFG,
            )
        )
        score = 5 + i % 5
        judgments = [
            CriterionJudgment(criterion=c, score=score, passed=score >= 7, reasoning="r", confidence=0.9)
            for c in CFG.criteria
        ]
        events.append(
            PromptJudged(
                batch_id=batch_id,
                prompt_id=pid,
                index=i,
                judge_model="j",
                judgments=judgments,
                usage=Usage(tokens_in=50, tokens_out=30),
                answer="a",
                config=CFG,
            )
        )
        events.append(
            PromptScored(
                batch_id=batch_id,
                prompt_id=pid,
                index=i,
                overall_score=score,
                passed=score >= 7,
                criteria_passed={c: score >= 7 for c in CFG.criteria},
            )
        )
    return events


async def test_redelivered_events_change_nothing_and_reports_derive_from_rows(servers) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    batch_id = "b-rec-" + secrets.token_hex(3)
    events = batch_events(batch_id, 20)
    try:
        async with engine.begin() as conn:
            assert await record(conn, events) == {batch_id}
        async with engine.begin() as conn:  # the whole stream again, as after a crash before ack
            await record(conn, list(reversed(events)))
        async with engine.connect() as conn:
            counts = (
                await conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM prompts WHERE batch_id=:b), (SELECT count(*) FROM responses WHERE batch_id=:b),"
                        " (SELECT count(*) FROM judgments WHERE batch_id=:b), (SELECT count(*) FROM scores WHERE batch_id=:b),"
                        " (SELECT count(*) FROM failures WHERE batch_id=:b)"
                    ),
                    {"b": batch_id},
                )
            ).one()
            assert tuple(counts) == (20, 15, 30, 15, 5)
            prog = await reporting.progress(conn, batch_id)
            assert prog is not None
            assert (prog.total, prog.responded, prog.judged, prog.scored, prog.failed, prog.done) == (
                20,
                15,
                15,
                15,
                5,
                20,
            )
            rep = await reporting.report(conn, batch_id, BatchStatus.PARTIAL_FAILURE)
        assert rep is not None
        scores = [5 + i % 5 for i in range(20) if i % 4]
        assert rep.completed == 15 and rep.failed == 5 and rep.failures_by_category == {"timeout": 5}
        assert rep.passed == sum(s >= 7 for s in scores)
        assert rep.mean_score == pytest.approx(sum(scores) / 15, abs=1e-3)
        assert [c.criterion for c in rep.criteria] == ["accuracy", "clarity"]
        assert rep.criteria[0].judged == 15
        assert (rep.tokens_in, rep.tokens_out, rep.judge_tokens_in) == (150, 300, 750)
        latencies = sorted(100 + i for i in range(20) if i % 4)
        assert rep.latency_p50_ms == pytest.approx((latencies[7]), abs=0.6)
        assert rep.cost_usd == pytest.approx(0.015)
        async with engine.begin() as conn:
            assert await store_final(conn, rep) is True
            assert await store_final(conn, rep) is False  # finished once
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT status, completed_prompts, failed_prompts, tokens_in FROM batches WHERE batch_id=:b"),
                    {"b": batch_id},
                )
            ).one()
            assert tuple(row) == ("partial_failure", 15, 5, 150)
            assert batch_id not in await reporting.running_batches(conn)
    finally:
        await engine.dispose()


async def test_a_prompt_that_failed_then_succeeded_counts_once(servers) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    batch_id = "b-rec-" + secrets.token_hex(3)
    events = batch_events(batch_id, 1, fail_every=0)
    late_failure = PromptFailed(
        batch_id=batch_id,
        prompt_id=f"{batch_id}-000000",
        index=0,
        stage=Stage.JUDGE,
        category=FailureCategory.JUDGE_PARSE_ERROR,
        error="bad json",
    )
    try:
        async with engine.begin() as conn:
            await record(conn, [*events, late_failure])
        async with engine.connect() as conn:
            prog = await reporting.progress(conn, batch_id)
        assert prog is not None and (prog.scored, prog.failed, prog.done) == (1, 0, 1)
    finally:
        await engine.dispose()


async def test_redrive_rebuilds_each_unfinished_prompts_next_event(servers) -> None:  # type: ignore[no-untyped-def]
    from services.recorder.redrive import redrive_events

    engine = create_async_engine(servers.database_url)
    batch_id = "b-redrive-" + secrets.token_hex(3)
    full = batch_events(batch_id, 4, fail_every=0)
    # prompt 0 done; 1 judged but not scored; 2 responded but not judged; 3 only queued
    keep = [
        e
        for e in full
        if not (
            (isinstance(e, PromptScored) and e.index in (1, 2, 3))
            or (isinstance(e, PromptJudged) and e.index in (2, 3))
            or (isinstance(e, PromptResponded) and e.index == 3)
        )
    ]
    try:
        async with engine.begin() as conn:
            await record(conn, keep)
        async with engine.connect() as conn:
            events = await redrive_events(conn, batch_id, "t1")
            again = await redrive_events(conn, batch_id, "t1")
        assert [(type(e).__name__, e.index) for e in events] == [
            ("PromptJudged", 1),
            ("PromptResponded", 2),
            ("PromptQueued", 3),
        ]
        judged = events[0]
        assert isinstance(judged, PromptJudged) and [j.criterion for j in judged.judgments] == CFG.criteria
        assert judged.judgments[0].score == 5 + 1 % 5 and judged.config == CFG
        assert [e.event_id for e in again] == [e.event_id for e in events]  # same token: same ids
        original = next(e for e in full if isinstance(e, PromptQueued) and e.index == 3)
        assert events[2].event_id != original.event_id  # not swallowed by the stream's dedup window
    finally:
        await engine.dispose()


async def test_the_write_that_may_finish_a_batch_gets_it_checked_before_the_next_tick(servers, nc) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    js = nc.jetstream()
    recorder = Tracker(engine, JetStreamPublisher(lambda: js))
    batch_id = "b-finish-" + secrets.token_hex(3)
    events = batch_events(batch_id, 8)  # prompts 0 and 4 fail; the last four events are prompt 7's
    completed = await nc.subscribe(subjects.batch_event(batch_id, "batch", "completed"))
    try:
        await recorder.write([*events[:-4]])
        assert recorder.finishing.is_set()  # nothing known about the batch yet: check it
        await recorder.flush()  # a regular tick: one prompt left
        assert not recorder.finishing.is_set() and not recorder.may_have_finished
        await recorder.write([*events[-4:-1]])  # queued, responded, judged: nothing finishes
        assert not recorder.finishing.is_set()
        await recorder.write([events[-1]])  # the last score
        assert recorder.finishing.is_set() and recorder.may_have_finished == {batch_id}
        await recorder.flush(only_finishing=True)
        done = BatchCompleted.model_validate_json((await completed.next_msg(timeout=10)).data)
        assert done.status is BatchStatus.PARTIAL_FAILURE and done.report.completed == 6
    finally:
        await engine.dispose()


async def test_an_accepted_and_a_rejected_batch_in_one_write_are_both_recorded(servers) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    good, bad = "b-shape-" + secrets.token_hex(3), "b-shape-" + secrets.token_hex(3)
    events: list[Event] = [
        BatchAccepted(batch_id=good, config=CFG, suite_name="s", total_prompts=3),
        BatchRejected(batch_id=bad, reason="no cases"),
    ]
    try:
        async with engine.begin() as conn:
            assert await record(conn, events) == {good, bad}
        async with engine.connect() as conn:
            rows = {
                r.batch_id: (r.status, r.total_prompts, r.rejected_reason)
                for r in await conn.execute(
                    text(
                        "SELECT batch_id, status, total_prompts, rejected_reason FROM batches WHERE batch_id IN (:g, :b)"
                    ),
                    {"g": good, "b": bad},
                )
            }
        assert rows == {good: ("running", 3, None), bad: ("rejected", 0, "no cases")}
        # batch ids are single-use: a late accepted changes neither a rejected nor a running batch,
        # and a repeated start's rejection changes nothing
        again = [
            BatchAccepted(batch_id=bad, config=CFG, suite_name="s2", total_prompts=2),
            BatchAccepted(batch_id=good, config=CFG, suite_name="s", total_prompts=9),
            BatchRejected(batch_id=good, reason="already started", repeated_start=True),
        ]
        async with engine.begin() as conn:
            await record(conn, again)
        async with engine.connect() as conn:
            after = {
                r.batch_id: (r.status, r.total_prompts, r.rejected_reason)
                for r in await conn.execute(
                    text(
                        "SELECT batch_id, status, total_prompts, rejected_reason FROM batches WHERE batch_id IN (:g, :b)"
                    ),
                    {"g": good, "b": bad},
                )
            }
        assert after == {good: ("running", 3, None), bad: ("rejected", 0, "no cases")}
    finally:
        await engine.dispose()
