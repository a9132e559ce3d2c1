"""The samples query (one page of a batch's prompts), in SQLAlchemy Core: every value a user
sends is a bound parameter, and filters and sorts are picked from fixed expressions.

A page reads at most `per_page` prompts; long answers and expected answers are clipped in SQL,
the other text fields here, so a page's memory does not depend on the batch's size.
"""

import math
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    Text,
    and_,
    case,
    exists,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import aggregate_order_by, array
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.queries import Sample, SampleFilter, SamplesPage, SamplesQuery
from services.recorder import tables as t

p, r, s, jc, j, f, b = t.prompts, t.responses, t.scores, t.judge_calls, t.judgments, t.failures, t.batches
mc = t.model_calls


def _key(name: str) -> ColumnElement[Any]:
    # A constant key of jsonb_build_object: a literal, since asyncpg cannot type a bound "any".
    return literal_column(f"'{name}'")


_latest_failure = (
    select(f.c.stage, f.c.category, f.c.error)
    .where(f.c.prompt_id == p.c.prompt_id)
    .order_by(f.c.created_at.desc(), f.c.stage.desc())
    .limit(1)
    .lateral("lf")
)
_status = case(
    (s.c.prompt_id.is_not(None), "scored"),
    (_latest_failure.c.stage.is_not(None), "failed"),
    else_="pending",
)
_judgments = (
    select(
        func.coalesce(
            func.jsonb_agg(
                aggregate_order_by(
                    func.jsonb_build_object(
                        _key("criterion"),
                        j.c.criterion,
                        _key("score"),
                        j.c.score,
                        _key("passed"),
                        j.c.passed,
                        _key("reasoning"),
                        j.c.evidence["reasoning"].astext,
                        _key("confidence"),
                        j.c.evidence["confidence"],
                    ),
                    j.c.criterion,
                )
            ),
            literal_column("'[]'::jsonb"),
        )
    )
    .where(j.c.prompt_id == p.c.prompt_id)
    .scalar_subquery()
)
# The prompt's bills, oldest first: found through the GIN index on prompt_ids (a prompt id
# names its batch, so no batch condition is needed).
_calls = (
    select(
        func.coalesce(
            func.jsonb_agg(
                aggregate_order_by(
                    func.jsonb_build_object(
                        _key("stage"),
                        mc.c.stage,
                        _key("call_id"),
                        mc.c.call_id,
                        _key("model"),
                        mc.c.model,
                        _key("outcome"),
                        mc.c.outcome,
                        _key("attempts"),
                        mc.c.attempts,
                        _key("tokens_in"),
                        mc.c.tokens_in,
                        _key("tokens_out"),
                        mc.c.tokens_out,
                        _key("cost_usd"),
                        mc.c.cost_usd,
                        _key("prompts"),
                        func.cardinality(mc.c.prompt_ids),
                        _key("occurred_at"),
                        mc.c.occurred_at,
                    ),
                    mc.c.occurred_at,
                )
            ),
            literal_column("'[]'::jsonb"),
        )
    )
    .where(mc.c.prompt_ids.contains(array([p.c.prompt_id])))
    .scalar_subquery()
)
_SORTS: dict[str, ColumnElement[Any]] = {
    "index": p.c.idx,
    "score": s.c.overall_score,
    "verdict": s.c.verdict_score,
    "latency": r.c.latency_ms,
    "tokens": r.c.tokens_in + r.c.tokens_out,
    "cost": r.c.cost_usd,
}


def _joined() -> FromClause:
    return (
        p.outerjoin(r, r.c.prompt_id == p.c.prompt_id)
        .outerjoin(s, s.c.prompt_id == p.c.prompt_id)
        .outerjoin(jc, jc.c.prompt_id == p.c.prompt_id)
        .outerjoin(_latest_failure, true())
    )


def _failed_with(column: ColumnElement[Any], value: object) -> ColumnElement[bool]:
    """Failed for good (no score) with a failure matching `column = value`, as reports count."""
    return and_(
        s.c.prompt_id.is_(None),
        exists().where(f.c.prompt_id == p.c.prompt_id, column == value),
    )


def _condition(flt: SampleFilter) -> ColumnElement[bool]:
    if flt.field == "passed":
        return s.c.passed.is_(true()) if flt.value is True else s.c.passed.is_(false())
    if flt.field == "status":
        return _status == flt.value
    if flt.field == "stage":
        return _failed_with(f.c.stage, flt.value)
    if flt.field == "category":
        return _failed_with(f.c.category, flt.value)
    if flt.field == "case_id":
        return p.c.case_id == flt.value
    if flt.field == "model":
        return r.c.model == flt.value
    if flt.field == "criterion":
        return exists().where(j.c.prompt_id == p.c.prompt_id, j.c.criterion == flt.key, j.c.passed.is_(flt.value))
    if flt.field == "metadata":
        assert flt.key is not None
        keys = flt.key.split(".")
        return func.jsonb_extract_path_text(p.c.metadata, *keys, type_=Text) == str(flt.value)
    raise ValueError(f"unknown filter field {flt.field!r}")


def _where(q: SamplesQuery) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [p.c.batch_id == q.batch_id]
    by_field: dict[tuple[str, str | None], list[ColumnElement[bool]]] = {}
    for flt in q.parsed_filters():
        by_field.setdefault((flt.field, flt.key), []).append(_condition(flt))
    conds += [or_(*alts) for alts in by_field.values()]
    if q.min_score is not None:
        conds.append(s.c.overall_score >= q.min_score)
    if q.min_verdict is not None:
        conds.append(s.c.verdict_score >= q.min_verdict)
    if q.after_index is not None:
        conds.append(p.c.idx > q.after_index)
    return conds


def _samples_select(q: SamplesQuery) -> Select[Any]:
    key = q.sort.lstrip("-")
    column = _SORTS[key]
    order = column.desc().nulls_last() if q.sort.startswith("-") else column.asc().nulls_last()
    stmt = (
        select(
            p.c.idx,
            p.c.prompt_id,
            p.c.case_id,
            p.c.messages,
            func.left(p.c.expected, q.max_chars).label("expected"),
            func.length(p.c.expected).label("expected_len"),
            p.c.metadata,
            func.left(r.c.answer, q.max_chars).label("answer"),
            func.length(r.c.answer).label("answer_len"),
            r.c.model,
            r.c.finish_reason,
            r.c.tokens_in,
            r.c.tokens_out,
            r.c.latency_ms,
            r.c.cost_usd,
            r.c.attempts,
            jc.c.judge_model,
            _judgments.label("judgments"),
            s.c.overall_score,
            s.c.verdict_score,
            s.c.passed,
            s.c.reasons,
            s.c.components,
            _status.label("status"),
            _latest_failure.c.stage.label("failure_stage"),
            _latest_failure.c.category.label("failure_category"),
            _latest_failure.c.error.label("failure_error"),
            _calls.label("calls"),
        )
        .select_from(_joined())
        .where(*_where(q))
        .order_by(order, p.c.idx.asc())
        .limit(q.per_page)
    )
    if q.after_index is None:
        stmt = stmt.offset((q.page - 1) * q.per_page)
    return stmt


class _Clipper:
    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.clipped: dict[str, int] = {}

    def text(self, path: str, value: str | None, full_length: int | None = None) -> str | None:
        if value is None:
            return None
        length = len(value) if full_length is None else full_length
        if length > self.max_chars:
            self.clipped[path] = length
            return value[: self.max_chars]
        return value

    def json(self, path: str, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(path, value)
        if isinstance(value, dict):
            return {k: self.json(f"{path}.{k}", v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.json(f"{path}.{i}", v) for i, v in enumerate(value)]
        return value


def _sample(row: Any, max_chars: int) -> Sample:
    clip = _Clipper(max_chars)
    messages = [
        {"role": m["role"], "content": clip.text(f"messages.{i}.content", m["content"])}
        for i, m in enumerate(row.messages or [])
    ]
    judgments = [
        {**jd, "reasoning": clip.text(f"judgments.{jd['criterion']}.reasoning", jd.get("reasoning") or "")}
        for jd in row.judgments or []
    ]
    components = [
        {**c, "detail": clip.text(f"components.{i}.detail", c.get("detail") or "")}
        for i, c in enumerate(row.components or [])
    ]
    return Sample(
        index=row.idx,
        prompt_id=row.prompt_id,
        case_id=row.case_id,
        status=row.status,
        messages=messages,  # type: ignore[arg-type]
        expected=clip.text("expected", row.expected, row.expected_len),
        metadata=clip.json("metadata", row.metadata or {}),
        answer=clip.text("answer", row.answer, row.answer_len),
        model=row.model,
        finish_reason=row.finish_reason,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        latency_ms=row.latency_ms,
        cost_usd=row.cost_usd,
        attempts=row.attempts,
        judge_model=row.judge_model,
        judgments=judgments,  # type: ignore[arg-type]
        overall_score=row.overall_score,
        verdict_score=row.verdict_score,
        passed=row.passed,
        reasons=[clip.text(f"reasons.{i}", x) or "" for i, x in enumerate(row.reasons or [])],
        components=components,  # type: ignore[arg-type]
        failure_stage=row.failure_stage,
        failure_category=row.failure_category,
        failure_error=clip.text("failure_error", row.failure_error),
        calls=row.calls or [],
        clipped=clip.clipped,
    )


def _without_bulk(sample: Sample) -> Sample:
    """A sample whose messages and metadata alone overflow a reply: kept without them, and said so."""
    clipped = dict(sample.clipped)
    clipped["messages"] = len(orjson.dumps([m.model_dump() for m in sample.messages]))
    clipped["metadata"] = len(orjson.dumps(sample.metadata))
    return sample.model_copy(update={"messages": [], "metadata": {}, "clipped": clipped})


def _fit(rows: Sequence[Any], max_chars: int, budget_bytes: int) -> tuple[list[Sample], bool]:
    """The samples that fit in `budget_bytes` of JSON; a first one that alone does not fit is
    clipped harder, so that a walk through the batch always moves on."""
    items: list[Sample] = []
    used = 0
    for n, row in enumerate(rows):
        sample = _sample(row, max_chars)
        size = len(sample.model_dump_json())
        chars = max_chars
        while n == 0 and size > budget_bytes and chars > 50:
            chars = max(50, chars // 4)
            sample = _sample(row, chars)
            size = len(sample.model_dump_json())
        if n == 0 and size > budget_bytes:
            sample = _without_bulk(sample)
            size = len(sample.model_dump_json())
        if used + size > budget_bytes and items:
            return items, True
        items.append(sample)
        used += size + 1
    return items, False


async def batch_exists(conn: AsyncConnection, batch_id: str) -> bool:
    found = await conn.execute(select(b.c.batch_id).where(b.c.batch_id == batch_id))
    return found.first() is not None


async def samples_page(conn: AsyncConnection, q: SamplesQuery, budget_bytes: int) -> SamplesPage | None:
    """One page of the batch's samples, or None if there is no such batch."""
    if not await batch_exists(conn, q.batch_id):
        return None
    total: int | None = None
    if q.with_total:
        total = (await conn.execute(select(func.count()).select_from(_joined()).where(*_where(q)))).scalar_one()
    rows = (await conn.execute(_samples_select(q))).all()
    items, truncated = _fit(rows, q.max_chars, budget_bytes)
    more = truncated or len(rows) == q.per_page
    next_after = items[-1].index if q.sort == "index" and items and more else None
    return SamplesPage(
        batch_id=q.batch_id,
        items=items,
        page=q.page,
        per_page=q.per_page,
        total=total,
        pages=None if total is None else max(1, math.ceil(total / q.per_page)),
        truncated=truncated,
        next_after_index=next_after,
    )
