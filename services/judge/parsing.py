"""Strict parsing of a judge's answer. Anything but the exact structure is a judgment failure,
never a score: no 'first JSON object anywhere', no defaults for missing fields."""

import re
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from contracts.events import CriterionJudgment
from contracts.inputs import BatchConfig
from contracts.text import StoredStr

_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)
M = TypeVar("M", bound=BaseModel)


class JudgeParseError(ValueError):
    """The judge's output is unusable; the message says why."""


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")
    criterion: str
    score: StrictInt = Field(ge=1, le=10)
    passed: StrictBool
    # Bounds and storable text as CriterionJudgment's: output outside them is a parse failure.
    reasoning: StoredStr = Field(min_length=1, max_length=5000)
    confidence: float = Field(ge=0, le=1, allow_inf_nan=False)
    suggestions: list[Annotated[StoredStr, Field(max_length=5000)]] = Field(max_length=20)


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judgments: list[_Item]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    judgments: list[_Item]


class _BatchOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    results: list[_Entry] = Field(min_length=1)


def _load(text: str, shape: type[M]) -> M:
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:  # many models wrap JSON in one markdown fence; that alone is tolerated
        body = fenced.group(1).strip()
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise JudgeParseError(f"judge output is not JSON: {exc}") from exc
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise JudgeParseError(f"judge output has the wrong shape at {loc or 'top level'}: {first['msg']}") from exc


def _judgments(items: list[_Item], criteria: list[str], cfg: BatchConfig, where: str = "") -> list[CriterionJudgment]:
    names = [j.criterion for j in items]
    if len(set(names)) != len(names):
        raise JudgeParseError(f"judge output{where} repeats a criterion: {names}")
    if set(names) != set(criteria):
        missing = sorted(set(criteria) - set(names))
        extra = sorted(set(names) - set(criteria))
        raise JudgeParseError(f"judge output{where} criteria mismatch (missing {missing}, unexpected {extra})")
    by_name = {j.criterion: j for j in items}
    return [
        CriterionJudgment(
            criterion=c,
            score=by_name[c].score,
            passed=by_name[c].score >= cfg.threshold(c),
            reasoning=by_name[c].reasoning,
            confidence=by_name[c].confidence,
            suggestions=by_name[c].suggestions,
        )
        for c in criteria
    ]


def parse_judgment(text: str, cfg: BatchConfig, criteria: list[str] | None = None) -> list[CriterionJudgment]:
    """The judgments for exactly `criteria` (default: the batch's), with pass/fail against the
    batch's thresholds."""
    return _judgments(_load(text, _Output).judgments, criteria or cfg.criteria, cfg)


def parse_batch_judgment(
    text: str, ids: list[str], criteria: list[str], cfg: BatchConfig
) -> dict[str, list[CriterionJudgment]]:
    """One entry per id, exactly: a missing, repeated or unknown id, or any entry with the wrong
    criteria, makes the whole reply unusable (entries are not trusted one by one, since a reply
    that confuses ids may have mixed up the answers, too)."""
    out = _load(text, _BatchOutput)
    got = [e.id for e in out.results]
    if len(set(got)) != len(got):
        raise JudgeParseError(f"judge output repeats an id: {got}")
    if set(got) != set(ids):
        missing = sorted(set(ids) - set(got))
        extra = sorted(set(got) - set(ids))
        raise JudgeParseError(f"judge output ids mismatch (missing {missing}, unexpected {extra})")
    return {e.id: _judgments(e.judgments, criteria, cfg, where=f" for {e.id}") for e in out.results}
