"""A prompt's verdict: the judge's criteria against their thresholds, every reference check the case
and the suite carry, combined with weights into one score and a pass/fail."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from statistics import fmean

from contracts.events import CriterionJudgment, PromptJudged, PromptScored
from contracts.inputs import BatchConfig
from contracts.references import ComponentScore, Reference, SqlEquivalence
from services.scorer.references import PATTERN_TIMEOUT_S, Deadline, check, clip, combine, result
from services.scorer.sql.execution import sql_equivalence, sql_verdict

log = logging.getLogger("evalbus.scorer")
SqlCheck = Callable[[SqlEquivalence, str], Awaitable[ComponentScore]]
# The checks of one answer run in one of these threads, never on the event loop: a user pattern
# may match for up to its time limit. Bounded so that a batch of slow patterns cannot take every
# thread of the loop's default executor.
CHECK_THREADS = 4
_checks = ThreadPoolExecutor(max_workers=CHECK_THREADS, thread_name_prefix="evalbus-checks")


class ReferenceDatabases:
    """The databases SQL checks may use, by the names suites give them, each behind a semaphore
    so that a batch of SQL answers cannot open more than `limit` connections to one database.
    A batch may hold its own checks to fewer (`for_batch`); the scorer's limit stays the cap."""

    def __init__(self, urls: Mapping[str, str], limit: int) -> None:
        self._urls = dict(urls)
        self._gates = {name: asyncio.Semaphore(limit) for name in self._urls}
        self._batch_gates: dict[tuple[str, str], tuple[int, asyncio.Semaphore]] = {}

    def for_batch(self, batch_id: str, limit: int | None) -> SqlCheck:
        """The SQL check for one batch's answers: `check`, within the batch's own limit per database."""
        if limit is None:
            return self.check

        async def limited(ref: SqlEquivalence, answer: str) -> ComponentScore:
            key = (ref.database, batch_id)
            entry = self._batch_gates.get(key)
            if entry is None or entry[0] != limit:
                entry = self._batch_gates[key] = (limit, asyncio.Semaphore(limit))
            gate = entry[1]
            try:
                async with gate:
                    return await self.check(ref, answer)
            finally:
                # A batch's gate nobody holds or waits for is dropped (no await since the check),
                # so a long-running scorer does not keep one per batch it ever saw.
                if self._batch_gates.get(key) is entry and gate._value == limit and not gate._waiters:
                    del self._batch_gates[key]

        return limited

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


def plain_checks(refs: Sequence[Reference], answer: str, timeout_s: float) -> list[ComponentScore]:
    """Every non-SQL check of one answer, its patterns sharing one deadline. Blocking; never raises:
    a check that fails in an unforeseen way is a failed component saying so."""
    deadline = Deadline(timeout_s)
    out = []
    for ref in refs:
        try:
            out.append(check(ref, answer, deadline))
        except Exception as exc:
            log.exception("check %r failed", ref.label)
            out.append(result(ref, False, f"the check failed: {type(exc).__name__}", verdict="error"))
    return out


def with_batch_timeout(ref: SqlEquivalence, cfg: BatchConfig) -> SqlEquivalence:
    """The check with the batch's SQL timeout in place of its own, if the batch sets one."""
    if cfg.sql_timeout_s is None or cfg.sql_timeout_s == ref.timeout_s:
        return ref
    return ref.model_copy(update={"timeout_s": cfg.sql_timeout_s})  # validated by BatchConfig's bound


async def _sql_check(ref: SqlEquivalence, answer: str, sql: SqlCheck | None) -> ComponentScore:
    if sql is None:
        return sql_verdict(ref, "error", "this scorer has no SQL databases")
    try:
        return await sql(ref, answer)
    except Exception as exc:
        log.exception("sql check %r failed", ref.label)
        return sql_verdict(ref, "error", f"the check failed: {type(exc).__name__}")


async def score_prompt(
    evt: PromptJudged, sql: SqlCheck | None = None, *, pattern_timeout_s: float = PATTERN_TIMEOUT_S
) -> PromptScored:
    cfg = evt.config
    # Pass/fail per criterion is re-derived from the batch's thresholds, not taken from the judge.
    # (model_copy skips validation: fine for a bool, which has no bound to respect.)
    judgments = [j.model_copy(update={"passed": j.score >= cfg.threshold(j.criterion)}) for j in evt.judgments]
    components = [judge_component(judgments, cfg)] if judgments else []
    plain = [ref for ref in evt.references if not isinstance(ref, SqlEquivalence)]
    done = iter(
        await asyncio.get_running_loop().run_in_executor(_checks, plain_checks, plain, evt.answer, pattern_timeout_s)
        if plain
        else []
    )
    for ref in evt.references:
        if isinstance(ref, SqlEquivalence):
            components.append(await _sql_check(with_batch_timeout(ref, cfg), evt.answer, sql))
        else:
            components.append(next(done))
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
