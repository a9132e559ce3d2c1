"""A prompt's verdict: the judge's criteria against their thresholds, every reference check the case
and the suite carry, combined with weights into one score and a pass/fail."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from statistics import fmean

from contracts.events import BatchConfig, CriterionJudgment, PromptJudged, PromptScored
from contracts.references import ComponentScore, SqlEquivalence
from services.scorer.references import check, clip, combine
from services.scorer.sql_equivalence import sql_equivalence, sql_verdict

SqlCheck = Callable[[SqlEquivalence, str], Awaitable[ComponentScore]]


class ReferenceDatabases:
    """The databases SQL checks may use, by the names suites give them, each behind a semaphore
    so that a batch of SQL answers cannot open more than `limit` connections to one database."""

    def __init__(self, urls: Mapping[str, str], limit: int) -> None:
        self._urls = dict(urls)
        self._gates = {name: asyncio.Semaphore(limit) for name in self._urls}

    async def check(self, ref: SqlEquivalence, answer: str) -> ComponentScore:
        url = self._urls.get(ref.database)
        if url is None:
            known = ", ".join(sorted(self._urls)) or "none"
            return sql_verdict(
                ref,
                "error",
                f"no database named {ref.database!r} is configured (EVALBUS_REFERENCE_DATABASES; known: {known})",
            )
        async with self._gates[ref.database]:
            return await sql_equivalence(ref, answer, url)


def judge_component(judgments: list[CriterionJudgment], cfg: BatchConfig) -> ComponentScore:
    """The judge as one component: its mean score mapped from 1-10 onto 0-1, passed when every
    criterion meets its threshold."""
    mean = fmean(j.score for j in judgments)
    failing = [f"{j.criterion} {j.score} < {cfg.threshold(j.criterion):g}" for j in judgments if not j.passed]
    return ComponentScore(
        name="judge",
        kind="judge",
        score=round((mean - 1) / 9, 6),
        passed=not failing,
        weight=cfg.judge_weight,
        detail=clip("; ".join(failing) or f"every criterion passed (mean {mean:.2f})"),
    )


def verdict(components: list[ComponentScore], pass_threshold: float | None) -> tuple[float | None, bool]:
    """Weighted score and pass/fail. Without a pass threshold every counted component must pass."""
    counted = [c for c in components if c.weight > 0]
    if not counted:
        return None, True
    score, passed = combine(counted, 0.0 if pass_threshold is None else pass_threshold)
    if pass_threshold is None:
        passed = all(c.passed for c in counted)
    return score, passed


async def score_prompt(evt: PromptJudged, sql: SqlCheck | None = None) -> PromptScored:
    cfg = evt.config
    # Pass/fail per criterion is re-derived from the batch's thresholds, not taken from the judge.
    judgments = [j.model_copy(update={"passed": j.score >= cfg.threshold(j.criterion)}) for j in evt.judgments]
    components = [judge_component(judgments, cfg)] if judgments else []
    for ref in evt.references:
        if isinstance(ref, SqlEquivalence):
            components.append(
                await sql(ref, evt.answer) if sql else sql_verdict(ref, "error", "this scorer has no SQL databases")
            )
        else:
            components.append(check(ref, evt.answer))
    score, passed = verdict(components, cfg.pass_threshold)
    # Why the case failed (or would have): only components that count.
    reasons = [f"{j.criterion} {j.score} < {cfg.threshold(j.criterion):g}" for j in judgments if not j.passed]
    reasons = reasons if cfg.judge_weight > 0 else []
    reasons += [f"{c.name}: {c.detail}" for c in components if c.kind != "judge" and not c.passed and c.weight > 0]
    if not judgments and not evt.references:
        reasons.append("no criteria were judged")
    return PromptScored(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        overall_score=round(fmean(j.score for j in judgments), 4) if judgments else None,
        passed=passed,
        criteria_passed={j.criterion: j.passed for j in judgments},
        reasons=reasons,
        verdict_score=score,
        components=components,
    )
