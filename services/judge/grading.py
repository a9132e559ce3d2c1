"""One chunk of answers graded on some criteria: one batched call (or a single-answer call for a
chunk of one), the one-by-one fallback when the batched reply is unusable, and what each answer
spent."""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from contracts.enums import FailureCategory, Stage
from contracts.events import CriterionJudgment, PromptResponded
from contracts.inputs import BatchConfig
from contracts.pricing import cost_usd
from services.judge.parsing import JudgeParseError, parse_batch_judgment, parse_judgment
from services.judge.prompt import Item, batch_response_format, build_batch_messages, build_messages, item_ids
from services.judge.prompt import response_format as single_format
from services.runtime.models.client import CallOptions, ChatModel, Completion, ModelCallError

log = logging.getLogger("evalbus.judge")


@dataclass(frozen=True)
class Spent:
    """Model usage attributed to one answer; `share` is its part of the calls made."""

    tokens_in: int = 0
    tokens_out: int = 0
    latency_ms: float = 0.0
    attempts: int = 0
    share: float = 0.0
    cost_usd: float = 0.0

    def then(self, later: "Spent") -> "Spent":
        """Calls made one after the other: the answer waited for both."""
        return self._plus(later, self.latency_ms + later.latency_ms)

    def alongside(self, other: "Spent") -> "Spent":
        """Calls made at the same time (one per criterion): the answer waited for the slower."""
        return self._plus(other, max(self.latency_ms, other.latency_ms))

    def _plus(self, other: "Spent", latency_ms: float) -> "Spent":
        return Spent(
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
            latency_ms=latency_ms,
            attempts=self.attempts + other.attempts,
            share=self.share + other.share,
            cost_usd=self.cost_usd + other.cost_usd,
        )


@dataclass(frozen=True)
class Graded:
    judgments: list[CriterionJudgment]
    spent: Spent
    batch_size: int  # answers in the call that produced the judgments
    fallback: bool = False


@dataclass(frozen=True)
class Failure:
    category: FailureCategory
    error: str
    attempts: int
    raw: str | None = None


ChunkOutcome = Graded | Failure  # what grading one chunk of criteria (one call, or its retries) ends in


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` into integers that add up to it (largest
    remainder, ties to the earlier item); equal parts when every weight is 0."""
    if not weights:
        return []
    if sum(weights) <= 0:
        weights = [1] * len(weights)
    whole = sum(weights)
    parts = [divmod(total * w, whole) for w in weights]
    out = [q for q, _ in parts]
    by_remainder = sorted(range(len(parts)), key=lambda i: (-parts[i][1], i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def _size(evt: PromptResponded) -> int:
    # What each answer adds to a batched prompt: its conversation, answer and reference.
    return sum(len(m.content) for m in evt.messages) + len(evt.answer) + len(evt.expected or "")


def split_usage(done: Completion, evts: Sequence[PromptResponded], model: str, cfg: BatchConfig) -> list[Spent]:
    """A batched call's usage across its answers: prompt tokens by the size each answer added,
    completion tokens evenly (each answer gets the same judgments); cost follows the tokens."""
    n = len(evts)
    tokens_in = apportion(done.tokens_in, [_size(e) for e in evts])
    tokens_out = apportion(done.tokens_out, [1] * n)
    return [
        Spent(
            tokens_in=tin,
            tokens_out=tout,
            latency_ms=done.latency_ms,
            attempts=done.attempts,
            share=1 / n,
            cost_usd=cost_usd(model, cfg, tin, tout),
        )
        for tin, tout in zip(tokens_in, tokens_out, strict=True)
    ]


def _tags(evts: Sequence[PromptResponded]) -> dict[str, str]:
    return {"X-Evalbus-Prompt-Id": ",".join(e.prompt_id for e in evts), "X-Evalbus-Stage": Stage.JUDGE.value}


async def grade_alone(
    model: ChatModel, evt: PromptResponded, cfg: BatchConfig, opts: CallOptions, criteria: list[str]
) -> ChunkOutcome:
    """The single-answer prompt: one call for this answer on `criteria`."""
    messages = build_messages(cfg, evt.messages, evt.answer, evt.expected, criteria=criteria)
    call = replace(opts, response_format=single_format(criteria))
    try:
        done = await model.complete(
            messages, call, batch_id=evt.batch_id, batch_limit=cfg.effective_judge_concurrency, tags=_tags([evt])
        )
    except ModelCallError as exc:
        return Failure(exc.category, str(exc), exc.attempts)
    try:
        judgments = parse_judgment(done.text, cfg, criteria)
    except JudgeParseError as exc:
        return Failure(FailureCategory.JUDGE_PARSE_ERROR, str(exc), done.attempts, raw=done.text)
    return Graded(judgments, split_usage(done, [evt], opts.model, cfg)[0], batch_size=1)


def _after_bad_batch(spent: Spent, alone: ChunkOutcome, why: str) -> ChunkOutcome:
    """A fallback's outcome, carrying its share of the unusable batched call."""
    if isinstance(alone, Failure):
        error = f"graded alone after an unusable batched reply ({why}): {alone.error}"
        return replace(alone, error=error, attempts=alone.attempts + spent.attempts)
    return Graded(alone.judgments, spent.then(alone.spent), batch_size=1, fallback=True)


async def grade_chunk(
    model: ChatModel, evts: Sequence[PromptResponded], cfg: BatchConfig, opts: CallOptions, criteria: list[str]
) -> list[ChunkOutcome]:
    """One outcome per answer, in order, from one call (plus one call per answer on fallback)."""
    if len(evts) == 1:
        return [await grade_alone(model, evts[0], cfg, opts, criteria)]
    ids = item_ids(len(evts))
    items = [Item(i, e.messages, e.answer, e.expected) for i, e in zip(ids, evts, strict=True)]
    messages = build_batch_messages(cfg, items, criteria)
    call = replace(opts, response_format=batch_response_format(ids, criteria))
    batch_id = evts[0].batch_id
    try:
        done = await model.complete(
            messages, call, batch_id=batch_id, batch_limit=cfg.effective_judge_concurrency, tags=_tags(evts)
        )
    except ModelCallError as exc:
        return [Failure(exc.category, str(exc), exc.attempts) for _ in evts]
    spent = split_usage(done, evts, opts.model, cfg)
    try:
        parsed = parse_batch_judgment(done.text, ids, criteria, cfg)
    except JudgeParseError as exc:
        log.warning(
            "batch %s: judge reply for %d answers unusable (%s); grading them one by one", batch_id, len(evts), exc
        )
        alone = await asyncio.gather(*(grade_alone(model, e, cfg, opts, criteria) for e in evts))
        return [_after_bad_batch(s, a, str(exc)[:300]) for s, a in zip(spent, alone, strict=True)]
    return [Graded(parsed[i], s, batch_size=len(evts)) for i, s in zip(ids, spent, strict=True)]
