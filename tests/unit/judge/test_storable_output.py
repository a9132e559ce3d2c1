"""A judge's output is untrusted too: the events built from it must still be valid (the contracts
refuse NUL and lone surrogates), so the judge keeps its raw output storable or fails to parse it."""

import json

import pytest

from contracts.enums import FailureCategory
from contracts.events import PromptResponded
from contracts.text import storable
from services.judge.grading import Failure
from services.judge.logic import failed
from services.judge.parsing import JudgeParseError, parse_judgment
from tests.factories import sample


def test_a_judge_failure_keeps_its_raw_output_storable() -> None:
    responded = sample(PromptResponded)
    out = failed(responded, Failure(FailureCategory.JUDGE_PARSE_ERROR, "bad\x00", 1, raw="{\x00" * 5000))
    assert storable(out.raw_output or "") == out.raw_output and len(out.raw_output or "") == 8000
    assert storable(out.error) == out.error


@pytest.mark.parametrize("field", ["reasoning", "suggestions"])
def test_judge_output_with_nul_is_a_parse_failure_not_a_crash(field: str) -> None:
    cfg = sample(PromptResponded).config
    items = [
        {"criterion": c, "score": 7, "passed": True, "reasoning": "r", "confidence": 0.5, "suggestions": []}
        for c in cfg.criteria
    ]
    items[0][field] = "a\x00b" if field == "reasoning" else ["a\x00b"]
    with pytest.raises(JudgeParseError, match="wrong shape"):
        parse_judgment(json.dumps({"judgments": items}), cfg)
