import json

import pytest

from contracts.events import BatchConfig
from services.judge.parsing import JudgeParseError, parse_judgment

CFG = BatchConfig(model="m", criteria=["helpfulness", "accuracy"], thresholds={"accuracy": 8})


def item(criterion: str, score: object = 7, **over: object) -> dict[str, object]:
    base = {
        "criterion": criterion,
        "score": score,
        "passed": True,
        "reasoning": "because",
        "confidence": 0.8,
        "suggestions": ["more detail"],
    }
    return base | over


def doc(*items: dict[str, object]) -> str:
    return json.dumps({"judgments": list(items)})


def test_valid_output_gives_one_judgment_per_criterion_in_config_order() -> None:
    out = parse_judgment(doc(item("accuracy", 7), item("helpfulness", 9)), CFG)
    assert [j.criterion for j in out] == ["helpfulness", "accuracy"]
    # pass/fail is ours (threshold 8 for accuracy), not the judge's claim
    assert [j.passed for j in out] == [True, False]
    assert out[1].suggestions == ["more detail"]


def test_one_markdown_fence_is_tolerated() -> None:
    text = "```json\n" + doc(item("helpfulness"), item("accuracy")) + "\n```"
    assert len(parse_judgment(text, CFG)) == 2


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("The answer is great. Score: 9/10", "not JSON"),
        ('Here you go: {"judgments": []}', "not JSON"),
        (doc(item("helpfulness")), "missing"),
        (doc(item("helpfulness"), item("accuracy"), item("tone")), "unexpected"),
        (doc(item("helpfulness"), item("helpfulness")), "repeats"),
        (doc(item("helpfulness", 11), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", 0), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", 7.5), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", "9"), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", True), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", passed="yes"), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", confidence=1.5), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", reasoning=""), item("accuracy")), "wrong shape"),
        (doc(item("helpfulness", extra=1), item("accuracy")), "wrong shape"),
        ('{"judgments": [' + json.dumps(item("helpfulness"))[:-5], "not JSON"),
        ("[]", "wrong shape"),
        ("", "not JSON"),
    ],
)
def test_unusable_output_is_an_error_never_a_score(text: str, why: str) -> None:
    with pytest.raises(JudgeParseError, match=why):
        parse_judgment(text, CFG)
