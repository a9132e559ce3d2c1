"""Re-driving a batch from the database, the system of record: every prompt that is neither
scored nor failed gets its next step's event again, rebuilt from its rows. Asked for over the API
(`evalbus resume`, when events were lost from the stream or every service was down), and done by
the recorder itself for a running batch that has made no progress for `stall_after_s`.

Re-driven events carry new ids (`token` makes them distinct from the originals, which the
stream's dedup window would otherwise drop); consumers are idempotent, so a prompt that was only
slow, not lost, costs at most one more model call and is still recorded once."""

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts.base import Event
from contracts.events import CriterionJudgment, JudgeCalls, PromptJudged, PromptQueued, PromptResponded, Usage
from contracts.ids import event_id
from contracts.inputs import BatchConfig, ChatMessage
from contracts.reports import ResumeResult
from services.recorder import reporting
from services.runtime.messaging.publishing import Publisher

log = logging.getLogger("evalbus.recorder")
REDRIVE_PUBLISH_CHUNK = 1000
# How often running batches are looked at for progress: a quarter of the wait, at most 30 s.
REDRIVE_CHECK_MAX_S = 30.0

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


class Redriver:
    """Re-drives batches: on request (`redrive`), and those that made no progress
    (`redrive_idle`)."""

    def __init__(self, engine: AsyncEngine, publisher: Publisher) -> None:
        self.engine = engine
        self.publisher = publisher
        self._last_moved: dict[str, tuple[tuple[int, int, int, int], float]] = {}

    async def redrive(self, batch_id: str, token: str) -> ResumeResult | None:
        """Send every unfinished prompt of a running batch on again, rebuilt from its rows
        (None: no such batch)."""
        async with self.engine.connect() as conn:
            events = await redrive_events(conn, batch_id, token)
        if events is None:
            return None
        for start in range(0, len(events), REDRIVE_PUBLISH_CHUNK):
            await self.publisher.publish(events[start : start + REDRIVE_PUBLISH_CHUNK])
        if events:
            log.warning("re-drove %d prompts of batch %s (%s)", len(events), batch_id, token)
        return ResumeResult(batch_id=batch_id, redriven=len(events), by_event=summary(events))

    async def redrive_idle(self, idle_after_s: float) -> None:
        """Re-drive running batches whose committed state has not moved for `idle_after_s`."""
        now = time.monotonic()
        async with self.engine.connect() as conn:
            running = await reporting.running_batches(conn)
            snapshots = {b: await reporting.progress(conn, b) for b in running}
        for batch_id, prog in snapshots.items():
            if prog is None:
                continue
            key = (prog.responded, prog.judged, prog.scored, prog.failed)
            seen = self._last_moved.get(batch_id)
            if seen is None or seen[0] != key:
                self._last_moved[batch_id] = (key, now)
            elif now - seen[1] >= idle_after_s:
                self._last_moved[batch_id] = (key, now)
                try:  # one batch whose rows cannot be re-driven must not stop the others'
                    await self.redrive(batch_id, f"stall-{int(time.time())}")  # the token's wire spelling
                except Exception as exc:
                    log.warning("could not re-drive batch %s (no progress for %.0f s): %r", batch_id, idle_after_s, exc)
        for gone in set(self._last_moved) - set(snapshots):
            del self._last_moved[gone]

    async def redrive_idle_forever(self, idle_after_s: float) -> None:
        while True:
            await asyncio.sleep(min(REDRIVE_CHECK_MAX_S, idle_after_s / 4))
            try:
                await self.redrive_idle(idle_after_s)
            except Exception as exc:
                log.warning("re-drive check failed: %r", exc)
