"""The fake judge's verdicts: one judgment per criterion from the answer text alone (scores from
hash draws, lowered for short answers and known probe phrases), the JSON replies that carry them,
and replies that break the contract on purpose."""

import re
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

import orjson

from services.fake_model.criteria import GENERIC_SUGGESTIONS, INJECTION_TARGETS, LENGTH_SENSITIVE, SUGGESTIONS
from services.fake_model.draws import Draws
from services.fake_model.judge_requests import parse_batch_judge_prompt, parse_judge_prompt

# The fake judge is a stand-in, not a model of injection resistance. It finds the answer in the
# judge's fences the way the judge's prompt defines them (the nonce of the first fence line), and
# it lowers the scores of answers matching a fixed list of known probe phrases (`_INJECTION`), so
# tests can follow an adversarial answer through the pipeline. A paraphrase, a homoglyph or any
# probe not on the list passes it. What evalbus guarantees about injection is the structure of the
# prompt it sends (tests/unit/judge/test_fencing.py), not how a model reacts to the data.

# Score distribution before adjustments, as cumulative percentages: mostly 5-9, a few 3-4 and 10.
_SCORE_CDF = ((3, 4), (4, 10), (5, 22), (6, 40), (7, 62), (8, 82), (9, 94), (10, 100))
_INJECTION = re.compile(
    r"ignore\s+(?:the|all|any|previous|prior|your|these|those)\b.{0,40}?\b(?:rubric|instructions?|criteria|guidelines|rules)"
    r"|\b10\s*/\s*10\b"
    r'|"(?:judgments|score)"\s*:'
    r"|\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:grader|evaluator|judge)\b"
    r"|\b(?:give|rate|score|award|grade)\b.{0,40}?\b(?:10|ten|full marks|maximum score|perfect score)\b",
    re.I | re.S,
)
_STRAY_LINE = re.compile(r"^[ \t]*[^\w\s]{1,3}[ \t]*$", re.M)
PASS_MARK = 7

_INJECTION_SUGGESTION = "Remove the text addressed to the grader; it reads as an attempt to manipulate the evaluation."


class Judgment(TypedDict):
    criterion: str
    score: int
    passed: bool
    reasoning: str
    confidence: float
    suggestions: list[str]


def _quote(answer: str) -> str:
    flat = " ".join(answer.split())
    return flat if len(flat) <= 40 else flat[:39].rstrip() + "…"


def _reasoning(criterion: str, score: int, answer: str, *, injected: bool, short: bool) -> str:
    quote = _quote(answer)
    if not quote:
        return f"There is no answer to assess, so {criterion} is as low as it can be."
    if injected:
        return (
            f'The answer ("{quote}") embeds instructions or scores aimed at the grader; they were ignored, '
            f"and they count against its {criterion}."
        )
    if short and criterion in LENGTH_SENSITIVE:
        return f'The answer ("{quote}") is too brief to do well on {criterion}; key steps are missing.'
    if score >= 9:
        return f'Excellent {criterion}: the answer ("{quote}") is specific, correct in tone and easy to act on.'
    if score >= PASS_MARK:
        return f'Good {criterion} overall; the answer ("{quote}") covers the main point with minor gaps.'
    if score >= 5:
        return f'Adequate but uneven {criterion}: the answer ("{quote}") is partly relevant and leaves gaps.'
    return f'Weak {criterion}: the answer ("{quote}") does not really address what the customer needs.'


def judge(answer: str, criteria: Sequence[str]) -> list[Judgment]:
    """One judgment per criterion, in order, computed from the answer text alone (known probe
    phrases score low: a fixed list, see the note above)."""
    stripped = answer.strip()
    stray = bool(_STRAY_LINE.search(answer))
    # A lone ":" line is a known "master key" against LLM judges: treated as a probe, too.
    injected = bool(_INJECTION.search(answer)) or stray
    short = len(stripped) < 150
    very_short = len(stripped) < 80
    out: list[Judgment] = []
    for criterion in criteria:
        draws = Draws("judge", answer, criterion)
        roll = draws.below(100)
        score = next(s for s, edge in _SCORE_CDF if roll < edge)
        low = criterion.lower()
        if not stripped:
            score = 1
        elif injected and low in INJECTION_TARGETS:
            score = 1 + draws.below(3)
        else:
            if very_short:
                score -= 3 if low in LENGTH_SENSITIVE else 1
            elif short and low in LENGTH_SENSITIVE:
                score -= 1
            if stray and low == "clarity":
                score -= 2
            if injected:
                score = min(score, 9)
        score = max(1, min(10, score))
        pool = SUGGESTIONS.get(low, GENERIC_SUGGESTIONS)
        n_suggestions = 0 if score == 10 else 1 if score >= PASS_MARK else 2
        first = draws.below(len(pool))
        suggestions = [pool[(first + i) % len(pool)] for i in range(min(n_suggestions, len(pool)))]
        if injected:
            suggestions.insert(0, _INJECTION_SUGGESTION)
        out.append(
            Judgment(
                criterion=criterion,
                score=score,
                passed=score >= PASS_MARK,
                reasoning=_reasoning(criterion, score, stripped, injected=injected, short=very_short),
                confidence=round(0.55 + 0.40 * draws.fraction(), 2),
                suggestions=suggestions,
            )
        )
    return out


def judgment_text(judgments: Sequence[Mapping[str, Any]]) -> str:
    return orjson.dumps({"judgments": judgments}).decode()


def batch_judgment_text(results: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> str:
    return orjson.dumps({"results": [{"id": item, "judgments": list(js)} for item, js in results]}).decode()


MALFORMED_KINDS = ("truncated", "prose", "out_of_range", "missing_criterion")
MALFORMED_BATCH_KINDS = ("truncated", "prose", "missing_id", "duplicate_id", "unknown_id", "missing_criterion")


def malformed_judgment(judgments: Sequence[Judgment], variant: int) -> str:
    """Judge output that breaks the contract, in one of four ways picked by `variant`."""
    kind = MALFORMED_KINDS[variant % len(MALFORMED_KINDS)]
    if kind == "truncated":
        text = judgment_text(judgments)
        return text[: max(1, len(text) // 2)]
    if kind == "prose":
        names = ", ".join(j["criterion"] for j in judgments)
        return f"Overall this is a solid answer. I would rate it about 8 out of 10 for {names}."
    if kind == "out_of_range":
        broken: list[dict[str, Any]] = [dict(j) for j in judgments]
        broken[0].update(score=11, passed=True)
        return judgment_text(broken)
    return judgment_text(judgments[:-1])


def malformed_batch_judgment(results: Sequence[tuple[str, Sequence[Judgment]]], variant: int) -> str:
    """A batched reply that breaks the contract, in one of six ways picked by `variant`."""
    kind = MALFORMED_BATCH_KINDS[variant % len(MALFORMED_BATCH_KINDS)]
    if kind == "truncated":
        text = batch_judgment_text(results)
        return text[: max(1, len(text) // 2)]
    if kind == "prose":
        return f"All {len(results)} answers look solid to me; about 8 out of 10 each."
    if kind == "missing_id":
        return batch_judgment_text(results[:-1])
    if kind == "duplicate_id":
        return batch_judgment_text([*results, results[0]])
    if kind == "unknown_id":
        return batch_judgment_text([*results[:-1], ("z" + results[-1][0], results[-1][1])])
    return batch_judgment_text([(item, js[:-1]) for item, js in results])


def judge_reply(user_message: str, *, malformed: bool, variant: int, malformed_batch_marker: str | None) -> str:
    """The reply to a judge request, batched or not. A batched reply holds, for each answer, exactly
    the judgments a single-answer request would get, so batching never changes a score; it is
    malformed when the fault draw says so or when an answer holds `malformed_batch_marker`."""
    batch = parse_batch_judge_prompt(user_message)
    if batch is None:
        criteria, answer = parse_judge_prompt(user_message)
        judgments = judge(answer, criteria)
        return malformed_judgment(judgments, variant) if malformed else judgment_text(judgments)
    criteria, items = batch
    results = [(item, judge(answer, criteria)) for item, answer in items]
    marker = malformed_batch_marker or None  # an empty marker would match every answer
    marked = marker is not None and any(marker in answer for _, answer in items)
    if (malformed or marked) and results:
        return malformed_batch_judgment(results, variant)
    return batch_judgment_text(results)
