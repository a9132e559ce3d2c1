"""The history query (recent batches, filtered), in SQLAlchemy Core: every value a user sends is
a bound parameter. A running batch's totals are counted now, a finished one's were stored.
"""

from typing import Any

from sqlalchemy import ColumnElement, case, exists, func, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.queries import BatchHistory, BatchSummary, HistoryQuery
from services.recorder import tables as t

s, f, b = t.scores, t.failures, t.batches


def _count_unless_finished(live: ColumnElement[Any], stored: ColumnElement[Any]) -> ColumnElement[Any]:
    # A finished batch's totals were stored from its rows; a running one's are counted now.
    return case((b.c.status == "running", live), else_=stored)


async def history(conn: AsyncConnection, q: HistoryQuery) -> BatchHistory:
    scored_live = select(func.count()).select_from(s).where(s.c.batch_id == b.c.batch_id).scalar_subquery()
    passed_live = (
        select(func.count())
        .select_from(s)
        .where(s.c.batch_id == b.c.batch_id, s.c.passed.is_(true()))
        .scalar_subquery()
    )
    failed_live = (
        select(func.count(f.c.prompt_id.distinct()))
        .where(f.c.batch_id == b.c.batch_id, ~exists().where(s.c.prompt_id == f.c.prompt_id))
        .scalar_subquery()
    )
    scored = _count_unless_finished(scored_live, b.c.completed_prompts).label("scored")
    failed = _count_unless_finished(failed_live, b.c.failed_prompts).label("failed")
    passed = _count_unless_finished(passed_live, b.c.passed_prompts).label("passed")
    conds: list[ColumnElement[bool]] = []
    if q.session is not None:
        conds.append(b.c.session_id == q.session)
    if q.experiment is not None:
        conds.append(b.c.experiment_name == q.experiment)
    if q.status is not None:
        conds.append(b.c.status == q.status.value)
    if q.model is not None:
        conds.append(b.c.model == q.model)
    stmt = (
        select(b, scored, failed, passed)
        .where(*conds)
        .order_by(b.c.created_at.desc(), b.c.batch_id.desc())
        .limit(q.limit)
    )
    items = [
        BatchSummary(
            batch_id=row.batch_id,
            status=row.status,
            target=row.total_prompts,
            done=row.scored + row.failed,
            scored=row.scored,
            failed=row.failed,
            passed=row.passed,
            pass_rate=round(row.passed / row.scored, 4) if row.scored else None,
            model=row.model,
            judge_model=row.judge_model,
            suite_name=row.suite_name,
            session_id=row.session_id,
            experiment=row.experiment_name,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )
        for row in (await conn.execute(stmt)).all()
    ]
    return BatchHistory(items=items)
