"""Progress and reports, computed from committed rows (never from counters kept in memory)."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.enums import BatchStatus
from contracts.reports import BatchProgress, BatchReport, ComponentSummary, CriterionSummary

_COUNTS = text(
    """
    SELECT b.status, b.total_prompts, b.accepted_at, b.finished_at,
      (SELECT count(*) FROM responses r WHERE r.batch_id = b.batch_id) AS responded,
      (SELECT count(*) FROM judge_calls j WHERE j.batch_id = b.batch_id) AS judged,
      (SELECT count(*) FROM scores s WHERE s.batch_id = b.batch_id) AS scored,
      (SELECT count(DISTINCT f.prompt_id) FROM failures f WHERE f.batch_id = b.batch_id
         AND NOT EXISTS (SELECT 1 FROM scores s2 WHERE s2.prompt_id = f.prompt_id)) AS failed,
      EXISTS (SELECT 1 FROM failures c WHERE c.batch_id = b.batch_id AND c.category = 'cancelled') AS cancelled
    FROM batches b WHERE b.batch_id = :b
    """
)


_BILLED = text(
    """
    SELECT stage, coalesce(sum(tokens_in), 0) AS tin, coalesce(sum(tokens_out), 0) AS tout,
           coalesce(sum(cost_usd), 0) AS cost, count(*) AS calls, coalesce(sum(attempt_count), 0) AS attempts
    FROM model_calls WHERE batch_id = :b GROUP BY stage
    """
)


# Breakers of the batch's own endpoints (batch_endpoints), not every breaker in the system: the
# latest state of each service's breaker per endpoint (ix_breaker_events_key_latest), an endpoint
# shown while any of them is not closed.
_OPEN_BREAKERS = text(
    """
    SELECT DISTINCT endpoint FROM (
      SELECT DISTINCT ON (e.endpoint_key, e.service) e.endpoint, e.new_state FROM breaker_events e
      WHERE e.endpoint_key IN (SELECT be.endpoint_key FROM batch_endpoints be WHERE be.batch_id = :b)
      ORDER BY e.endpoint_key, e.service, e.stream_seq DESC
    ) latest WHERE new_state <> 'closed' ORDER BY endpoint
    """
)
# Openings of the batch's endpoints' breakers while it ran (ix_breaker_events_key_time).
_OPENINGS = text(
    """
    SELECT count(*) FROM breaker_events e
    WHERE e.endpoint_key IN (SELECT be.endpoint_key FROM batch_endpoints be WHERE be.batch_id = :b)
      AND e.new_state = 'open' AND e.occurred_at >= :start AND e.occurred_at <= coalesce(:end, now())
    """
)


def _elapsed(started: datetime | None, finished: datetime | None) -> float:
    if started is None:
        return 0.0
    return max(0.0, ((finished or datetime.now(UTC)) - started).total_seconds())


def final_status(scored: int, failed: int, cancelled: bool) -> BatchStatus:
    if cancelled:
        return BatchStatus.CANCELLED
    if failed == 0:
        return BatchStatus.COMPLETED
    if scored == 0:
        return BatchStatus.FAILED
    return BatchStatus.PARTIAL_FAILURE


async def progress(conn: AsyncConnection, batch_id: str) -> BatchProgress | None:
    row = (await conn.execute(_COUNTS, {"b": batch_id})).mappings().first()
    if row is None:
        return None
    running = row["status"] == "running"
    open_now = [r[0] for r in await conn.execute(_OPEN_BREAKERS, {"b": batch_id})] if running else []
    return BatchProgress(
        cancelled=row["cancelled"],
        breakers_open=open_now,
        batch_id=batch_id,
        status=BatchStatus(row["status"]),
        total=row["total_prompts"],
        responded=row["responded"],
        judged=row["judged"],
        scored=row["scored"],
        failed=row["failed"],
        elapsed_s=round(_elapsed(row["accepted_at"], row["finished_at"]), 3),
    )


async def report(conn: AsyncConnection, batch_id: str, status: BatchStatus | None = None) -> BatchReport | None:
    """The batch's figures as committed now; `status` overrides the stored one (when finishing)."""
    batch = (await conn.execute(text("SELECT * FROM batches WHERE batch_id = :b"), {"b": batch_id})).mappings().first()
    if batch is None:
        return None
    prog = await progress(conn, batch_id)
    assert prog is not None
    params = {"b": batch_id}
    chat: Any = (
        (
            await conn.execute(
                text(
                    """
        SELECT coalesce(sum(tokens_in), 0) AS tin, coalesce(sum(tokens_out), 0) AS tout,
               coalesce(sum(cost_usd), 0) AS cost,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95
        FROM responses WHERE batch_id = :b
        """
                ),
                params,
            )
        )
        .mappings()
        .one()
    )
    judge: Any = (
        (
            await conn.execute(
                text(
                    "SELECT coalesce(sum(tokens_in), 0) AS tin, coalesce(sum(tokens_out), 0) AS tout,"
                    " coalesce(sum(cost_usd), 0) AS cost, coalesce(sum(call_share), 0) AS calls,"
                    " coalesce(sum(unbatched_calls), 0) AS unbatched, count(*) FILTER (WHERE fallback) AS fallbacks"
                    " FROM judge_calls WHERE batch_id = :b"
                ),
                params,
            )
        )
        .mappings()
        .one()
    )
    verdicts: Any = (
        (
            await conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE passed) AS passed, avg(overall_score) AS mean FROM scores WHERE batch_id = :b"
                ),
                params,
            )
        )
        .mappings()
        .one()
    )
    per_criterion = {
        r["criterion"]: r
        for r in (
            await conn.execute(
                text(
                    "SELECT criterion, avg(score) AS mean, avg(passed::int) AS pass_rate, count(*) AS n"
                    " FROM judgments WHERE batch_id = :b GROUP BY criterion"
                ),
                params,
            )
        ).mappings()
    }
    failures = {
        r["category"]: r["n"]
        for r in (
            await conn.execute(
                text(
                    """
            SELECT category, count(DISTINCT prompt_id) AS n FROM failures f
            WHERE batch_id = :b AND NOT EXISTS (SELECT 1 FROM scores s WHERE s.prompt_id = f.prompt_id)
            GROUP BY category ORDER BY category
            """
                ),
                params,
            )
        ).mappings()
    }
    window = {"b": batch_id, "start": batch["accepted_at"] or batch["created_at"], "end": batch["finished_at"]}
    openings = (await conn.execute(_OPENINGS, window)).scalar_one()
    billed = {r["stage"]: r for r in (await conn.execute(_BILLED, params)).mappings()}
    chat_billed, judge_billed = billed.get("chat"), billed.get("judge")

    def _billed(what: str) -> int:
        return sum(int(r[what]) for r in billed.values())

    config = batch["config"] or {}
    order = list(config.get("criteria") or []) + sorted(set(per_criterion) - set(config.get("criteria") or []))

    def _round(value: Any, digits: int = 3) -> float | None:
        return None if value is None else round(float(value), digits)

    criteria = [
        CriterionSummary(
            criterion=c,
            mean_score=_round(per_criterion[c]["mean"]) if c in per_criterion else None,
            pass_rate=_round(per_criterion[c]["pass_rate"], 4) if c in per_criterion else None,
            judged=per_criterion[c]["n"] if c in per_criterion else 0,
        )
        for c in order
    ]
    return BatchReport(
        batch_id=batch_id,
        status=status or BatchStatus(batch["status"]),
        model=batch["model"] or "",
        judge_model=batch["judge_model"] or "",
        session_id=batch["session_id"],
        experiment=batch["experiment_name"],
        suite_name=batch["suite_name"] or "",
        total=prog.total,
        completed=prog.scored,
        failed=prog.failed,
        passed=verdicts["passed"],
        pass_rate=_round(verdicts["passed"] / prog.scored, 4) if prog.scored else None,
        mean_score=_round(verdicts["mean"]),
        criteria=criteria,
        failures_by_category=failures,
        latency_p50_ms=_round(chat["p50"], 1),
        latency_p95_ms=_round(chat["p95"], 1),
        tokens_in=int(chat["tin"]),
        tokens_out=int(chat["tout"]),
        judge_tokens_in=int(judge["tin"]),
        judge_tokens_out=int(judge["tout"]),
        cost_usd=round(float(chat["cost"]) + float(judge["cost"]), 6),
        breaker_openings=int(openings),
        judge_calls=round(float(judge["calls"]), 2),
        judge_calls_saved=round(max(0.0, float(judge["unbatched"]) - float(judge["calls"])), 2),
        judge_fallbacks=int(judge["fallbacks"]),
        components=await component_summaries(conn, batch_id),
        billed_tokens_in=int(chat_billed["tin"]) if chat_billed else 0,
        billed_tokens_out=int(chat_billed["tout"]) if chat_billed else 0,
        billed_judge_tokens_in=int(judge_billed["tin"]) if judge_billed else 0,
        billed_judge_tokens_out=int(judge_billed["tout"]) if judge_billed else 0,
        billed_cost_usd=round(sum(float(r["cost"]) for r in billed.values()), 6),
        billed_calls=_billed("calls"),
        billed_attempts=_billed("attempts"),
        wall_time_s=round(prog.elapsed_s, 3) if batch["accepted_at"] else None,
        created_at=batch["created_at"],
        finished_at=batch["finished_at"],
    )


_COMPONENTS = text(
    """
    SELECT c->>'name' AS name, c->>'kind' AS kind, count(*) AS n,
           count(*) FILTER (WHERE (c->>'passed')::boolean) AS passed, avg((c->>'score')::float) AS mean
    FROM scores s CROSS JOIN LATERAL jsonb_array_elements(s.components) c
    WHERE s.batch_id = :b GROUP BY 1, 2 ORDER BY (c->>'kind') <> 'judge', 1
    """
)
_SQL_VERDICTS = text(
    """
    SELECT c->>'name' AS name, c->>'verdict' AS verdict, count(*) AS n
    FROM scores s CROSS JOIN LATERAL jsonb_array_elements(s.components) c
    WHERE s.batch_id = :b AND c->>'verdict' IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    """
)


async def component_summaries(conn: AsyncConnection, batch_id: str) -> list[ComponentSummary]:
    verdicts: dict[str, dict[str, int]] = {}
    for r in await conn.execute(_SQL_VERDICTS, {"b": batch_id}):
        verdicts.setdefault(r.name, {})[r.verdict] = r.n
    return [
        ComponentSummary(
            name=r.name,
            kind=r.kind,
            evaluated=r.n,
            passed=r.passed,
            mean_score=None if r.mean is None else round(float(r.mean), 4),
            verdicts=verdicts.get(r.name, {}),
        )
        for r in await conn.execute(_COMPONENTS, {"b": batch_id})
    ]


async def running_batches(conn: AsyncConnection) -> list[str]:
    rows = await conn.execute(text("SELECT batch_id FROM batches WHERE status = 'running'"))
    return [r[0] for r in rows]
