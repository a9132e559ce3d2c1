"""Strict parsing of a judge's answer. Anything but the exact structure is a judgment failure,
never a score: no 'first JSON object anywhere', no defaults for missing fields."""

import re

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from contracts.events import BatchConfig, CriterionJudgment

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


class JudgeParseError(ValueError):
    """The judge's output is unusable; the message says why."""


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    criterion: str
    score: StrictInt = Field(ge=1, le=10)
    passed: StrictBool
    reasoning: str = Field(min_length=1, max_length=5000)
    confidence: float = Field(ge=0, le=1)
    suggestions: list[str] = Field(max_length=20)


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judgments: list[_Item]


def parse_judgment(text: str, cfg: BatchConfig) -> list[CriterionJudgment]:
    """The judgments for exactly the batch's criteria, with pass/fail against the batch's thresholds."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:  # many models wrap JSON in one markdown fence; that alone is tolerated
        body = fenced.group(1).strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise JudgeParseError(f"judge output is not JSON: {exc}") from exc
    try:
        out = _Output.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise JudgeParseError(f"judge output has the wrong shape at {loc or 'top level'}: {first['msg']}") from exc
    names = [j.criterion for j in out.judgments]
    if len(set(names)) != len(names):
        raise JudgeParseError(f"judge output repeats a criterion: {names}")
    if set(names) != set(cfg.criteria):
        missing = sorted(set(cfg.criteria) - set(names))
        extra = sorted(set(names) - set(cfg.criteria))
        raise JudgeParseError(f"judge output criteria mismatch (missing {missing}, unexpected {extra})")
    by_name = {j.criterion: j for j in out.judgments}
    return [
        CriterionJudgment(
            criterion=c,
            score=by_name[c].score,
            passed=by_name[c].score >= cfg.threshold(c),
            reasoning=by_name[c].reasoning,
            confidence=by_name[c].confidence,
            suggestions=by_name[c].suggestions,
        )
        for c in cfg.criteria
    ]
