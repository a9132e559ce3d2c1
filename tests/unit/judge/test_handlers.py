"""The judge's handler with a fake judge model: what each responded prompt becomes."""

import asyncio

from contracts.enums import FailureCategory, Stage
from contracts.events import PromptFailed, PromptJudged
from services.judge.batcher import JudgeBatcher
from services.judge.handlers import on_prompt_responded
from tests.unit.judge.fakes import ENDPOINTS, FakeJudge, responded, score, unavailable

LINGER_S = 0.05


async def test_an_answer_is_judged_on_every_criterion() -> None:
    model = FakeJudge()
    evt = responded("b-judge", 2, "Paris", judge_batch_size=1)
    out = await on_prompt_responded(evt, JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S))
    assert isinstance(out, PromptJudged)
    assert (out.prompt_id, out.index, out.answer, out.judge_model) == (evt.prompt_id, 2, "Paris", "gpt-4o-mini")
    assert [(j.criterion, j.score) for j in out.judgments] == [(c, score("Paris", c)) for c in ("accuracy", "clarity")]
    assert len(model.calls) == 1 and not model.calls[0].batched


async def test_answers_handled_together_share_one_judge_call() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S)
    evts = [responded("b-judge", i, judge_batch_size=3) for i in range(3)]
    out = await asyncio.gather(*(on_prompt_responded(e, batcher) for e in evts))
    assert [type(r) for r in out] == [PromptJudged] * 3 and [r.index for r in out] == [0, 1, 2]
    assert len(model.calls) == 1 and model.calls[0].answers == [e.answer for e in evts]


async def test_a_model_error_fails_the_prompt_with_its_category() -> None:
    model = FakeJudge(fail=unavailable)
    out = await on_prompt_responded(responded("b-judge", 0), JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S))
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.JUDGE, FailureCategory.SERVER_ERROR, 3)


async def test_an_answer_of_a_cancelled_batch_fails_as_cancelled_without_a_call() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S, cancelled={"b-gone"})
    out = await on_prompt_responded(responded("b-gone", 0), batcher)
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.JUDGE, FailureCategory.CANCELLED, 0)
    assert model.calls == []


async def test_a_batch_without_a_judge_gets_an_empty_judgment_without_a_call() -> None:
    model = FakeJudge()
    out = await on_prompt_responded(
        responded("b-off", 0, judge_enabled=False), JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S)
    )
    assert isinstance(out, PromptJudged) and out.judgments == [] and out.judge_model is None
    assert model.calls == []
