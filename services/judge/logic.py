"""Answers through the judge: judged events, or judge failures (never a made-up score)."""

import asyncio
from collections.abc import Container, Sequence
from functools import reduce

from contracts.enums import FailureCategory, Stage
from contracts.events import JudgeCalls, PromptFailed, PromptJudged, PromptResponded, Usage
from contracts.inputs import BatchConfig
from services.judge.grading import ChunkOutcome, Failure, Graded, Spent, grade_chunk
from services.runtime.models.client import CallOptions, ChatModel
from services.runtime.models.endpoints import EndpointRejected, Endpoints


def call_options(cfg: BatchConfig, endpoints: Endpoints) -> CallOptions:
    """The judge's call; raises EndpointRejected if the batch names an endpoint it may not use."""
    return CallOptions(
        model=cfg.effective_judge_model,
        endpoint=endpoints.for_judge(cfg),
        timeout_s=cfg.effective_judge_timeout_s,
        max_retries=cfg.max_retries,
        temperature=0.0,
        retry_base_s=cfg.retry_base_s,
        breaker_fail_max=cfg.breaker_fail_max,
        breaker_reset_s=cfg.breaker_reset_s,
    )


def criteria_sets(cfg: BatchConfig) -> list[list[str]]:
    """The criteria of each call an answer needs: all at once, or one call per criterion."""
    return [list(cfg.criteria)] if cfg.judge_mode == "combined" else [[c] for c in cfg.criteria]


def failed(evt: PromptResponded, failure: Failure) -> PromptFailed:
    return PromptFailed.of(
        evt, Stage.JUDGE, failure.category, failure.error, attempts=failure.attempts, raw_output=failure.raw
    )


def not_judged(evt: PromptResponded) -> PromptJudged:
    """The judge is off for this batch: an empty judgment that cost nothing."""
    return PromptJudged(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        judge_model=None,
        judgments=[],
        usage=Usage(),
        answer=evt.answer,
        expected=evt.expected,
        references=evt.references,
        calls=JudgeCalls(share=0, unbatched=0),
        config=evt.config,
    )


def merge(evt: PromptResponded, model: str, parts: Sequence[ChunkOutcome]) -> PromptJudged | PromptFailed:
    """One answer's outcomes, one per criteria set in order; any failure fails the answer."""
    for part in parts:
        if isinstance(part, Failure):
            return failed(evt, part)
    graded = [p for p in parts if isinstance(p, Graded)]
    spent = reduce(Spent.alongside, (g.spent for g in graded))
    return PromptJudged(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        judge_model=model,
        judgments=[j for g in graded for j in g.judgments],
        usage=Usage(
            tokens_in=spent.tokens_in,
            tokens_out=spent.tokens_out,
            latency_ms=spent.latency_ms,
            attempts=max(1, spent.attempts),
            cost_usd=spent.cost_usd,
        ),
        answer=evt.answer,
        expected=evt.expected,
        references=evt.references,
        calls=JudgeCalls(
            share=spent.share,
            unbatched=len(parts),
            batch_size=max(g.batch_size for g in graded),
            fallback=any(g.fallback for g in graded),
        ),
        config=evt.config,
    )


async def grade_group(
    model: ChatModel, evts: Sequence[PromptResponded], endpoints: Endpoints
) -> list[PromptJudged | PromptFailed]:
    """Answers of one batch and one judge config, judge enabled, in chunks of the batch's
    `judge_batch_size`; one result per answer, in order."""
    cfg = evts[0].config
    try:
        opts = call_options(cfg, endpoints)
    except EndpointRejected as exc:  # no call at all: the endpoint is not one the key may go to
        refused = Failure(FailureCategory.INVALID_INPUT, f"judge endpoint: {exc}", attempts=0)
        return [failed(evt, refused) for evt in evts]
    size = cfg.judge_batch_size
    chunks = [evts[i : i + size] for i in range(0, len(evts), size)]

    async def one_set(criteria: list[str]) -> list[ChunkOutcome]:
        outs = await asyncio.gather(*(grade_chunk(model, chunk, cfg, opts, criteria) for chunk in chunks))
        return [o for chunk_out in outs for o in chunk_out]

    # One row per criteria set, holding every answer's outcome in order; all calls run at once.
    rows = await asyncio.gather(*(one_set(criteria) for criteria in criteria_sets(cfg)))
    return [merge(evt, opts.model, [row[i] for row in rows]) for i, evt in enumerate(evts)]


async def judge_prompt(
    model: ChatModel, evt: PromptResponded, endpoints: Endpoints, cancelled: Container[str] = ()
) -> PromptJudged | PromptFailed:
    """One answer on its own (no batching)."""
    if evt.batch_id in cancelled:
        return PromptFailed.cancelled(evt, Stage.JUDGE)
    if not evt.config.judge_enabled:
        return not_judged(evt)
    [result] = await grade_group(model, [evt], endpoints)
    return result
