"""Re-driving a batch from the database, the system of record: every prompt that is neither
scored nor failed gets its next step's event again, rebuilt from its rows. Used when events were
lost from the stream (or every service was down) and by the stall check.

Re-driven events carry new ids (`token` makes them distinct from the originals, which the
stream's dedup window would otherwise drop); consumers are idempotent, so a prompt that was only
slow, not lost, costs at most one more model call and is still recorded once."""

from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.base import Event
from contracts.events import CriterionJudgment, JudgeCalls, PromptJudged, PromptQueued, PromptResponded, Usage
from contracts.ids import event_id
from contracts.inputs import BatchConfig, ChatMessage

_UNFINISHED = text(
    """
    SELECT p.prompt_id, p.idx, p.case_id, p.messages, p.expected, p.metadata, p."references",
           r.answer, r.model, r.finish_reason, r.tokens_in, r.tokens_out, r.latency_ms, r.cost_usd, r.attempts,
           jc.judge_model, jc.tokens_in AS j_tokens_in, jc.tokens_out AS j_tokens_out,
           jc.latency_ms AS j_latency_ms, jc.cost_usd AS j_cost_usd, jc.attempts AS j_attempts,
           jc.call_share, jc.unbatched_calls, jc.batch_size AS j_batch_size, jc.fallback AS j_fallback, jc.prompt_id IS NOT NULL AS judged
    FROM prompts p
    LEFT JOIN responses r ON r.prompt_id = p.prompt_id
    LEFT JOIN judge_calls jc ON jc.prompt_id = p.prompt_id
    WHERE p.batch_id = :b
      AND NOT EXISTS (SELECT 1 FROM scores s WHERE s.prompt_id = p.prompt_id)
      AND NOT EXISTS (SELECT 1 FROM failures f WHERE f.prompt_id = p.prompt_id)
    ORDER BY p.idx
    """
)


def _usage(row: Any, prefix: str = "") -> Usage:
    return Usage(**{k: row[prefix + k] for k in ("tokens_in", "tokens_out", "latency_ms", "attempts", "cost_usd")})


def _next_event(row: Any, cfg: BatchConfig, judgments: list[CriterionJudgment], batch_id: str, token: str) -> Event:
    common: dict[str, Any] = {
        "batch_id": batch_id,
        "prompt_id": row["prompt_id"],
        "index": row["idx"],
        "expected": row["expected"],
        "references": row["references"],
        "config": cfg,
    }
    messages = [ChatMessage.model_validate(m) for m in row["messages"]]
    if row["answer"] is None:
        cls: type[Event] = PromptQueued
        fields: dict[str, Any] = {"case_id": row["case_id"], "messages": messages, "metadata": row["metadata"]}
    elif not row["judged"]:
        cls = PromptResponded
        fields = {
            "messages": messages,
            "answer": row["answer"],
            "finish_reason": row["finish_reason"],
            "model": row["model"],
            "usage": _usage(row),
        }
    else:
        cls = PromptJudged
        fields = {
            "judge_model": row["judge_model"],
            "judgments": judgments,
            "answer": row["answer"],
            "usage": _usage(row, "j_"),
            "calls": JudgeCalls(
                share=row["call_share"],
                unbatched=row["unbatched_calls"],
                batch_size=row["j_batch_size"],
                fallback=row["j_fallback"],
            ),
        }
    eid = event_id(f"{cls.entity}.{cls.verb}.redrive", batch_id, row["prompt_id"], token)
    return cls(event_id=eid, **common, **fields)


async def redrive_events(conn: AsyncConnection, batch_id: str, token: str) -> Sequence[Event] | None:
    """The events that move every unfinished prompt of a running batch one step on (none for a
    batch that is not running; None when there is no such batch)."""
    batch = (
        await conn.execute(text("SELECT status, config FROM batches WHERE batch_id = :b"), {"b": batch_id})
    ).first()
    if batch is None:
        return None
    if batch.status != "running" or batch.config is None:
        return []
    cfg = BatchConfig.model_validate(batch.config)
    rows = (await conn.execute(_UNFINISHED, {"b": batch_id})).mappings().all()
    judged_ids = [r["prompt_id"] for r in rows if r["judged"]]
    judgments: dict[str, list[CriterionJudgment]] = {}
    if judged_ids:
        for j in await conn.execute(
            text("SELECT prompt_id, criterion, score, passed, evidence FROM judgments WHERE prompt_id = ANY(:ids)"),
            {"ids": judged_ids},
        ):
            judgments.setdefault(j.prompt_id, []).append(
                CriterionJudgment(
                    criterion=j.criterion,
                    score=j.score,
                    passed=j.passed,
                    reasoning=j.evidence["reasoning"],
                    confidence=j.evidence["confidence"],
                    suggestions=j.evidence.get("suggestions", []),
                )
            )
    return [_next_event(r, cfg, judgments.get(r["prompt_id"], []), batch_id, token) for r in rows]


def summary(events: Sequence[Event]) -> dict[str, int]:
    return dict(Counter(f"{e.entity}.{e.verb}" for e in events))
