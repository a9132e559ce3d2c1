"""The per-case verdict: judge thresholds, reference checks, weights and the pass threshold."""

from typing import Any

from contracts.events import CriterionJudgment, PromptJudged
from contracts.inputs import BatchConfig
from contracts.references import ComponentScore, SqlEquivalence, parse_references
from services.scorer.logic import ReferenceDatabases, score_prompt
from services.scorer.sql.execution import sql_verdict
from tests.factories import BatchEvents


def judged(
    scores: dict[str, int], cfg: BatchConfig, answer: str = "a", references: list[dict[str, Any]] | None = None
) -> PromptJudged:
    judgments = [
        CriterionJudgment(criterion=c, score=s, passed=s >= 7, reasoning="r", confidence=0.5) for c, s in scores.items()
    ]
    refs = parse_references(references or [])
    return BatchEvents("b", config=cfg).judged(1, judgments=judgments, answer=answer, references=refs)


async def test_passes_only_when_every_criterion_meets_its_threshold() -> None:
    cfg = BatchConfig(model="m", criteria=["accuracy", "clarity"], thresholds={"clarity": 5})
    ok = await score_prompt(judged({"accuracy": 8, "clarity": 5}, cfg))
    assert ok.passed and ok.overall_score == 6.5 and ok.criteria_passed == {"accuracy": True, "clarity": True}
    assert [c.name for c in ok.components] == ["judge"] and ok.verdict_score == round(5.5 / 9, 6)
    bad = await score_prompt(judged({"accuracy": 6, "clarity": 9}, cfg))
    assert not bad.passed and bad.reasons == ["accuracy 6 < 7"]
    assert bad.event_id == ok.event_id  # the verdict of one prompt has one id


async def test_no_judgments_means_no_score() -> None:
    cfg = BatchConfig(model="m", judge_enabled=False)
    out = await score_prompt(judged({}, cfg))
    assert out.overall_score is None and out.passed and out.reasons == ["no criteria were judged"]
    assert out.verdict_score is None and out.components == []


async def test_reference_checks_alone_decide_without_a_judge() -> None:
    cfg = BatchConfig(model="m", judge_enabled=False)
    refs = [{"kind": "normalized", "value": "Paris"}, {"kind": "contains", "value": "france", "weight": 0}]
    ok = await score_prompt(judged({}, cfg, answer=" paris. ", references=refs))
    assert ok.passed and ok.verdict_score == 1.0
    assert [(c.kind, c.passed, c.weight) for c in ok.components] == [("normalized", True, 1.0), ("contains", False, 0)]
    assert ok.reasons == []  # a check with weight 0 is reported, never a reason to fail
    bad = await score_prompt(judged({}, cfg, answer="Lyon", references=refs))
    assert not bad.passed and bad.verdict_score == 0.0 and bad.reasons[0].startswith("normalized: ")


async def test_weights_and_pass_threshold_combine_judge_and_references() -> None:
    refs = [{"kind": "exact", "value": "42", "weight": 3}, {"kind": "json_valid", "weight": 1, "require_object": True}]
    strict = BatchConfig(model="m", criteria=["accuracy"], judge_weight=1)
    # judge 10 -> 1.0 (passes); exact passes (3); not JSON fails (1): every component must pass by default
    out = await score_prompt(judged({"accuracy": 10}, strict, answer="42", references=refs))
    assert not out.passed and out.verdict_score == 0.8  # (1*1 + 3*1 + 1*0) / 5
    lenient = strict.model_copy(update={"pass_threshold": 0.75})
    assert (await score_prompt(judged({"accuracy": 10}, lenient, answer="42", references=refs))).passed
    higher = strict.model_copy(update={"pass_threshold": 0.85})
    assert not (await score_prompt(judged({"accuracy": 10}, higher, answer="42", references=refs))).passed
    # the judge can be reported without counting
    unweighted = lenient.model_copy(update={"judge_weight": 0})
    out = await score_prompt(judged({"accuracy": 1}, unweighted, answer="42", references=refs))
    assert out.passed and out.verdict_score == 0.75 and out.components[0].weight == 0
    assert len(out.reasons) == 1 and out.reasons[0].startswith("json_valid: ")  # no judge reasons: it does not count


async def test_criterion_pass_follows_the_batch_threshold_not_the_judge() -> None:
    cfg = BatchConfig(model="m", criteria=["accuracy"], thresholds={"accuracy": 9})
    out = await score_prompt(judged({"accuracy": 8}, cfg))  # the judge said passed (8 >= 7)
    assert not out.passed and out.criteria_passed == {"accuracy": False}


async def test_sql_checks_use_the_named_database_and_a_hard_failure_always_fails() -> None:
    seen: list[str] = []

    async def fake_sql(ref: SqlEquivalence, answer: str) -> ComponentScore:
        seen.append(ref.database)
        return sql_verdict(ref, "write_attempt" if "DELETE" in answer else "equal", "checked")

    refs = [{"kind": "sql", "expected_sql": "SELECT 1", "database": "shop"}, {"kind": "contains", "value": "x"}]
    cfg = BatchConfig(model="m", judge_enabled=False, pass_threshold=0.1)
    ok = await score_prompt(judged({}, cfg, answer="SELECT 1 -- x", references=refs), fake_sql)
    assert ok.passed and ok.components[0].verdict == "equal" and seen == ["shop"]
    # half the weight passes (contains "x"), above the threshold, but writing SQL fails the case
    bad = await score_prompt(judged({}, cfg, answer="DELETE FROM t -- x", references=refs), fake_sql)
    assert not bad.passed and bad.verdict_score == 0.5 and bad.components[0].verdict == "write_attempt"


async def test_an_unknown_database_is_an_error_verdict_not_a_crash() -> None:
    dbs = ReferenceDatabases({"shop": "postgresql://nobody@127.0.0.1:1/x"}, limit=2)
    refs = [{"kind": "sql", "expected_sql": "SELECT 1", "database": "warehouse"}]
    out = await score_prompt(judged({}, BatchConfig(model="m", judge_enabled=False), "SELECT 1", refs), dbs.check)
    assert not out.passed and out.components[0].verdict == "error"
    assert "no database named 'warehouse'" in out.components[0].detail and "shop" in out.components[0].detail
