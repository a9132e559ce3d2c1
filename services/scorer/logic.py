"""A prompt's verdict: overall score and pass/fail against the batch's per-criterion thresholds."""

from statistics import fmean

from contracts.events import PromptJudged, PromptScored


def score_prompt(evt: PromptJudged) -> PromptScored:
    cfg = evt.config
    passed_by = {j.criterion: j.score >= cfg.threshold(j.criterion) for j in evt.judgments}
    reasons = [
        f"{j.criterion} {j.score} < {cfg.threshold(j.criterion):g}" for j in evt.judgments if not passed_by[j.criterion]
    ]
    if not evt.judgments:
        reasons.append("no criteria were judged")
    return PromptScored(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        overall_score=round(fmean(j.score for j in evt.judgments), 4) if evt.judgments else None,
        passed=all(passed_by.values()),
        criteria_passed=passed_by,
        reasons=reasons,
    )
