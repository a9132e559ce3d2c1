from contracts.events import BatchConfig, CriterionJudgment, PromptJudged, Usage
from services.scorer.logic import score_prompt


def judged(scores: dict[str, int], cfg: BatchConfig) -> PromptJudged:
    return PromptJudged(
        batch_id="b",
        prompt_id="b-000001",
        index=1,
        judge_model="j",
        judgments=[
            CriterionJudgment(criterion=c, score=s, passed=s >= 7, reasoning="r", confidence=0.5)
            for c, s in scores.items()
        ],
        usage=Usage(),
        answer="a",
        config=cfg,
    )


def test_passes_only_when_every_criterion_meets_its_threshold() -> None:
    cfg = BatchConfig(model="m", criteria=["accuracy", "clarity"], thresholds={"clarity": 5})
    ok = score_prompt(judged({"accuracy": 8, "clarity": 5}, cfg))
    assert ok.passed and ok.overall_score == 6.5 and ok.criteria_passed == {"accuracy": True, "clarity": True}
    bad = score_prompt(judged({"accuracy": 6, "clarity": 9}, cfg))
    assert not bad.passed and bad.reasons == ["accuracy 6 < 7"]
    assert bad.event_id == ok.event_id  # the verdict of one prompt has one id


def test_no_judgments_means_no_score() -> None:
    cfg = BatchConfig(model="m", judge_enabled=False)
    out = score_prompt(judged({}, cfg))
    assert out.overall_score is None and out.passed and out.reasons == ["no criteria were judged"]
