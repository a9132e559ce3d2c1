import json

import pytest

from contracts.inputs import BatchConfig
from services.judge.parsing import JudgeParseError, parse_batch_judgment, parse_judgment

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


# --- batched replies

IDS = ["a1", "a2"]


def entry(id_: str, *items: dict[str, object]) -> dict[str, object]:
    return {"id": id_, "judgments": list(items) or [item("helpfulness"), item("accuracy", 8)]}


def batch(*entries: dict[str, object]) -> str:
    return json.dumps({"results": list(entries)})


def test_a_batched_reply_gives_each_id_its_judgments_in_config_order() -> None:
    text = batch(entry("a2", item("accuracy", 9), item("helpfulness", 3)), entry("a1"))
    out = parse_batch_judgment(text, IDS, CFG.criteria, CFG)
    assert list(out) == ["a2", "a1"]
    assert [(j.criterion, j.score, j.passed) for j in out["a2"]] == [("helpfulness", 3, False), ("accuracy", 9, True)]
    assert [(j.criterion, j.passed) for j in out["a1"]] == [("helpfulness", True), ("accuracy", True)]
    fenced = "```json\n" + batch(entry("a1"), entry("a2")) + "\n```"
    assert set(parse_batch_judgment(fenced, IDS, CFG.criteria, CFG)) == set(IDS)
    one = parse_batch_judgment(
        batch(entry("a1", item("accuracy")), entry("a2", item("accuracy"))), IDS, ["accuracy"], CFG
    )
    assert [j.criterion for j in one["a1"]] == ["accuracy"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (batch(entry("a1")), "ids mismatch .missing \\['a2'\\]"),
        (batch(entry("a1"), entry("a2"), entry("a3")), "unexpected \\['a3'\\]"),
        (batch(entry("a1"), entry("b2")), "ids mismatch"),
        (batch(entry("a1"), entry("a1")), "repeats an id"),
        (batch(entry("a1"), entry("a1"), entry("a2")), "repeats an id"),
        (batch(entry("a1"), entry("a2", item("helpfulness"))), "for a2 criteria mismatch .missing \\['accuracy'\\]"),
        (batch(entry("a1", item("helpfulness"), item("accuracy"), item("tone")), entry("a2")), "for a1 criteria"),
        (batch(entry("a1", item("helpfulness"), item("helpfulness")), entry("a2")), "for a1 repeats a criterion"),
        (batch(entry("a1", item("helpfulness", 11), item("accuracy")), entry("a2")), "wrong shape"),
        (batch(entry("a1") | {"note": "x"}, entry("a2")), "wrong shape"),
        (json.dumps({"results": [entry("a1"), entry("a2")], "summary": "ok"}), "wrong shape"),
        (json.dumps({"results": []}), "wrong shape"),
        (json.dumps([entry("a1"), entry("a2")]), "wrong shape"),
        (json.dumps({"judgments": [item("helpfulness"), item("accuracy")]}), "wrong shape"),
        (batch(entry("a1"), entry("a2"))[:-3], "not JSON"),
        ("Both answers are fine: 8/10.", "not JSON"),
        ("Sure! " + batch(entry("a1"), entry("a2")), "not JSON"),
        ("```json\n" + batch(entry("a1"), entry("a2")) + "\n```\n```json\n{}\n```", "not JSON"),
        ("", "not JSON"),
    ],
)
def test_an_unusable_batched_reply_is_an_error_for_the_whole_chunk(text: str, why: str) -> None:
    with pytest.raises(JudgeParseError, match=why):
        parse_batch_judgment(text, IDS, CFG.criteria, CFG)
