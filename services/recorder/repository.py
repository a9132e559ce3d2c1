"""Every write of the recorder: events as rows (one bulk upsert per table per batch of events,
keyed by natural ids), dead letters and the failures they imply, breaker events, and a finished
batch's report and quality.

`execute(insert(...).on_conflict_do_nothing(), [dicts])` takes SQLAlchemy's insertmanyvalues
path, about 8x faster than one `.values([...])` statement per batch.
"""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Table, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from contracts.base import Event
from contracts.enums import BatchStatus
from contracts.events import (
    BatchAccepted,
    BatchRejected,
    CallBilled,
    PromptFailed,
    PromptJudged,
    PromptQueued,
    PromptResponded,
    PromptScored,
)
from contracts.ops import DeadLetter
from contracts.quality import QualityReport
from contracts.reports import BatchReport
from services.recorder import tables as t
from services.recorder.checks import batch_totals
from services.recorder.dead_letters import printable, prompt_failure
from services.recorder.endpoints import batch_endpoint_keys, endpoint_key
from services.recorder.parsing import BreakerRow
from services.runtime.models.endpoints import Endpoints

# Parents first, so a batch row exists before the rows that point at it.
ORDER: tuple[Table, ...] = (
    t.batches,
    t.batch_endpoints,
    t.prompts,
    t.responses,
    t.judge_calls,
    t.judgments,
    t.scores,
    t.failures,
    t.model_calls,
)


def rows_for(evt: Event, endpoints: Endpoints | None = None) -> list[tuple[Table, dict[str, Any]]]:
    """The rows one event contributes (none for events the recorder only passes by); `endpoints`:
    the operator's (services.recorder.endpoints.configured() when None)."""
    if isinstance(evt, BatchAccepted):
        cfg = evt.config
        used = [
            (t.batch_endpoints, {"batch_id": evt.batch_id, "endpoint_key": key})
            for key in batch_endpoint_keys(cfg, endpoints)
        ]
        return [
            (
                t.batches,
                {
                    "batch_id": evt.batch_id,
                    "status": BatchStatus.RUNNING.value,
                    "config": cfg.model_dump(mode="json"),
                    "suite_name": evt.suite_name,
                    "model": cfg.model,
                    "judge_model": cfg.effective_judge_model,
                    "session_id": cfg.session_id,
                    "experiment_name": cfg.experiment,
                    "total_prompts": evt.total_prompts,
                    "accepted_at": evt.occurred_at,
                },
            ),
            *used,
        ]
    if isinstance(evt, BatchRejected):
        if evt.repeated_start:
            return []  # answers whoever sent the repeat; the batch it names stays as it is
        return [
            (
                t.batches,
                {
                    "batch_id": evt.batch_id,
                    "status": BatchStatus.REJECTED.value,
                    "rejected_reason": evt.reason,
                    "finished_at": evt.occurred_at,
                },
            )
        ]
    if isinstance(evt, PromptQueued):
        return [
            (
                t.prompts,
                {
                    "prompt_id": evt.prompt_id,
                    "batch_id": evt.batch_id,
                    "idx": evt.index,
                    "case_id": evt.case_id,
                    "messages": [m.model_dump() for m in evt.messages],
                    "expected": evt.expected,
                    "metadata": evt.metadata,
                    "references": [r.model_dump(mode="json", by_alias=True) for r in evt.references],
                },
            )
        ]
    if isinstance(evt, PromptResponded):
        u = evt.usage
        return [
            (
                t.responses,
                {
                    "prompt_id": evt.prompt_id,
                    "batch_id": evt.batch_id,
                    "model": evt.model,
                    "answer": evt.answer,
                    "finish_reason": evt.finish_reason,
                    "tokens_in": u.tokens_in,
                    "tokens_out": u.tokens_out,
                    "latency_ms": u.latency_ms,
                    "cost_usd": u.cost_usd,
                    "attempts": u.attempts,
                },
            )
        ]
    if isinstance(evt, PromptJudged):
        u = evt.usage
        rows: list[tuple[Table, dict[str, Any]]] = [
            (
                t.judge_calls,
                {
                    "prompt_id": evt.prompt_id,
                    "batch_id": evt.batch_id,
                    "judge_model": evt.judge_model,
                    "tokens_in": u.tokens_in,
                    "tokens_out": u.tokens_out,
                    "latency_ms": u.latency_ms,
                    "cost_usd": u.cost_usd,
                    "attempts": u.attempts,
                    "call_share": evt.calls.share,
                    "unbatched_calls": evt.calls.unbatched,
                    "batch_size": evt.calls.batch_size,
                    "fallback": evt.calls.fallback,
                },
            )
        ]
        rows += [
            (
                t.judgments,
                {
                    "prompt_id": evt.prompt_id,
                    "criterion": j.criterion,
                    "batch_id": evt.batch_id,
                    "score": j.score,
                    "passed": j.passed,
                    "judge_model": evt.judge_model,
                    "evidence": {"reasoning": j.reasoning, "confidence": j.confidence, "suggestions": j.suggestions},
                },
            )
            for j in evt.judgments
        ]
        return rows
    if isinstance(evt, PromptScored):
        return [
            (
                t.scores,
                {
                    "prompt_id": evt.prompt_id,
                    "batch_id": evt.batch_id,
                    "overall_score": evt.overall_score,
                    "passed": evt.passed,
                    "criteria_passed": evt.criteria_passed,
                    "reasons": evt.reasons,
                    "verdict_score": evt.verdict_score,
                    "components": [c.model_dump(mode="json") for c in evt.components],
                },
            )
        ]
    if isinstance(evt, PromptFailed):
        return [
            (
                t.failures,
                {
                    "prompt_id": evt.prompt_id,
                    "stage": evt.stage.value,
                    "batch_id": evt.batch_id,
                    "category": evt.category.value,
                    "error": evt.error,
                    "attempts": evt.attempts,
                    "raw_output": evt.raw_output,
                },
            )
        ]
    if isinstance(evt, CallBilled):
        return [
            (
                t.model_calls,
                {
                    "call_id": evt.call_id,
                    "batch_id": evt.batch_id,
                    "stage": evt.stage.value,
                    "prompt_ids": evt.prompt_ids,
                    "endpoint": evt.endpoint,
                    "model": evt.model,
                    "outcome": evt.outcome,
                    "attempt_count": len(evt.attempts),
                    "attempts": [a.model_dump(mode="json") for a in evt.attempts],
                    "tokens_in": evt.tokens_in,
                    "tokens_out": evt.tokens_out,
                    "cost_usd": evt.cost_usd,
                    "occurred_at": evt.occurred_at,
                },
            )
        ]
    return []


def _shapes(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by their key set, in order of first appearance. insertmanyvalues needs one
    shape per statement, and padding a row with None would overrule a column's default (a
    rejected batch has no total_prompts: NULL, not 0, would fail the NOT NULL column)."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())


async def record(conn: AsyncConnection, events: Sequence[Event], endpoints: Endpoints | None = None) -> set[str]:
    """Upsert every event's rows; returns the batch ids whose state may have changed."""
    by_table: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    touched: set[str] = set()
    for evt in events:
        rows = rows_for(evt, endpoints)
        if rows and not isinstance(evt, CallBilled):  # (a bill changes no progress)
            touched.add(evt.batch_id)
        for table, row in rows:
            by_table[table].append(row)
    new_batches: set[str] = set()
    for table in ORDER:
        pending = by_table.get(table, [])
        if table is t.batch_endpoints:  # only with the batch row they came with
            pending = [row for row in pending if row["batch_id"] in new_batches]
        for shaped in _shapes(pending):
            # Every row is keyed by natural ids: the first writer wins. Batch ids are single-use, so
            # neither a late `accepted` nor a `rejected` changes a batch that is already recorded.
            # A bill is keyed by its call id: a re-published one counts once, a repeated call twice.
            stmt = insert(table).on_conflict_do_nothing()
            if table is t.batches:
                inserted = await conn.execute(stmt.returning(t.batches.c.batch_id), shaped)
                new_batches.update(inserted.scalars().all())
            else:
                await conn.execute(stmt, shaped)
    return touched


async def record_dead_letters(conn: AsyncConnection, letters: list[DeadLetter]) -> set[str]:
    """Store the letters and the failures they imply; returns the batches touched."""
    if not letters:
        return set()
    rows = [
        {
            "service": printable(dl.service),
            "subject": printable(dl.subject),
            "stream_seq": dl.stream_seq,
            "reason": printable(dl.reason),
            "payload": printable(dl.payload),
        }
        for dl in letters
    ]
    await conn.execute(insert(t.dead_letters).on_conflict_do_nothing(), rows)
    failures = [f for f in (prompt_failure(dl) for dl in letters) if f is not None]
    # Only prompts their batch has become failures (one query): a dead letter of a forged or
    # refused event must not finish, or count in, a batch. A batch without a row is left out.
    totals = await batch_totals(conn, {f["batch_id"] for f in failures})
    failures = [f for f in failures if f.pop("idx") < (totals.get(f["batch_id"]) or 0)]
    if failures:
        await conn.execute(insert(t.failures).on_conflict_do_nothing(), failures)
    return {f["batch_id"] for f in failures}


BREAKER_FIELDS = {"service", "endpoint", "old_state", "new_state", "occurred_at"}


async def record_breaker_events(conn: AsyncConnection, rows: Sequence[BreakerRow]) -> None:
    """One row per breaker event, keyed by its stream sequence (a redelivery changes nothing)."""
    if rows:
        await conn.execute(
            insert(t.breaker_events).on_conflict_do_nothing(),
            [
                {
                    "stream_seq": r.stream_seq,
                    "endpoint_key": endpoint_key(r.event.endpoint),
                    **r.event.model_dump(include=BREAKER_FIELDS),
                }
                for r in rows
            ],
        )


async def store_final(conn: AsyncConnection, rep: BatchReport) -> bool:
    """Mark a running batch finished with its totals; False if it was already finished."""
    result = await conn.execute(
        text(
            """
            UPDATE batches SET status = :status, completed_prompts = :completed, failed_prompts = :failed,
              passed_prompts = :passed, tokens_in = :tin, tokens_out = :tout, cost_usd = :cost,
              report = CAST(:report AS jsonb), finished_at = now()
            WHERE batch_id = :b AND status = 'running'
            """
        ),
        {
            "b": rep.batch_id,
            "status": rep.status.value,
            "completed": rep.completed,
            "failed": rep.failed,
            "passed": rep.passed,
            "tin": rep.tokens_in,
            "tout": rep.tokens_out,
            "cost": rep.cost_usd,
            "report": rep.model_dump_json(),
        },
    )
    return bool(result.rowcount)


async def store_quality(conn: AsyncConnection, report: QualityReport) -> None:
    row = {"batch_id": report.batch_id, "rating": report.rating, "report": report.model_dump(mode="json")}
    stmt = insert(t.quality_reports).values(row)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["batch_id"],
            set_={
                "rating": stmt.excluded.rating,
                "report": stmt.excluded.report,
                "computed_at": stmt.excluded.computed_at,
            },
        )
    )


def connect(database_url: str) -> AsyncEngine:
    """The recorder's engine (one per process)."""
    return create_async_engine(
        database_url,
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        # A paused or partitioned database surfaces as an error (and a retry), not a hang.
        connect_args={"command_timeout": 20},
        # orjson for JSONB columns: the stdlib encoder was a tenth of the recorder's write path.
        json_serializer=lambda value: orjson.dumps(value).decode(),
        json_deserializer=orjson.loads,
    )


class Repository:
    """The writes handlers make, each in a transaction of its own on the recorder's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record_dead_letters(self, letters: list[DeadLetter]) -> set[str]:
        async with self.engine.begin() as conn:
            return await record_dead_letters(conn, letters)

    async def record_breaker_events(self, rows: Sequence[BreakerRow]) -> None:
        async with self.engine.begin() as conn:
            await record_breaker_events(conn, rows)
