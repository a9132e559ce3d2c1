"""The judge's handler with a fake judge model: what each responded prompt becomes, and the
bills of the calls that graded it."""

import asyncio

from contracts.enums import FailureCategory, Stage
from contracts.events import CallBilled, PromptFailed, PromptJudged
from services.judge.batcher import JudgeBatcher
from services.judge.handlers import on_prompt_responded
from tests.unit.judge.fakes import ENDPOINTS, FakeJudge, responded, score, unavailable

LINGER_S = 0.05


async def test_an_answer_is_judged_on_every_criterion() -> None:
    model = FakeJudge()
    evt = responded("b-judge", 2, "Paris", judge_batch_size=1)
    out, bill = await on_prompt_responded(evt, JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S))
    assert isinstance(out, PromptJudged)
    assert (out.prompt_id, out.index, out.answer, out.judge_model) == (evt.prompt_id, 2, "Paris", "gpt-4o-mini")
    assert [(j.criterion, j.score) for j in out.judgments] == [(c, score("Paris", c)) for c in ("accuracy", "clarity")]
    assert len(model.calls) == 1 and not model.calls[0].batched
    assert isinstance(bill, CallBilled)
    assert (bill.stage, bill.prompt_ids, bill.model) == (Stage.JUDGE, [evt.prompt_id], "gpt-4o-mini")
    assert (bill.tokens_in, bill.tokens_out) == (out.usage.tokens_in, out.usage.tokens_out) == model.usage


async def test_answers_handled_together_share_one_judge_call() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S)
    evts = [responded("b-judge", i, judge_batch_size=3) for i in range(3)]
    outs = await asyncio.gather(*(on_prompt_responded(e, batcher) for e in evts))
    out = [o[0] for o in outs]
    assert [type(r) for r in out] == [PromptJudged] * 3 and [r.index for r in out] == [0, 1, 2]
    assert len(model.calls) == 1 and model.calls[0].answers == [e.answer for e in evts]
    # The one call's bill goes out with each answer: the same event (one call id), counted once,
    # with the whole call's tokens and every prompt it graded.
    bills = [o[1] for o in outs]
    assert all(len(o) == 2 for o in outs) and len({b.event_id for b in bills}) == 1
    bill = bills[0]
    assert isinstance(bill, CallBilled)
    assert bill.prompt_ids == [e.prompt_id for e in evts] and (bill.tokens_in, bill.tokens_out) == model.usage
    assert sum(o.usage.tokens_in for o in out if isinstance(o, PromptJudged)) == bill.tokens_in


async def test_a_batched_call_with_a_fallback_bills_both_calls_once_each() -> None:
    model = FakeJudge(broken=lambda call: call.batched)
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S)
    evts = [responded("b-judge", i, judge_batch_size=2) for i in range(2)]
    outs = await asyncio.gather(*(on_prompt_responded(e, batcher) for e in evts))
    assert len(model.calls) == 3  # the unusable batched call, then one per answer
    for evt, (out, *bills) in zip(evts, outs, strict=True):
        assert isinstance(out, PromptJudged) and out.calls.fallback
        assert [b.prompt_ids for b in bills if isinstance(b, CallBilled)] == [
            [e.prompt_id for e in evts],
            [evt.prompt_id],
        ]
        assert sum(b.tokens_in for b in bills if isinstance(b, CallBilled)) == 2 * model.usage[0]


async def test_a_model_error_fails_the_prompt_with_its_category() -> None:
    model = FakeJudge(fail=unavailable)
    out, bill = await on_prompt_responded(responded("b-judge", 0), JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S))
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.JUDGE, FailureCategory.SERVER_ERROR, 3)
    assert isinstance(bill, CallBilled) and bill.outcome == "server_error" and bill.tokens_in == 0


async def test_an_answer_of_a_cancelled_batch_fails_as_cancelled_without_a_call() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S, cancelled={"b-gone"})
    [out] = await on_prompt_responded(responded("b-gone", 0), batcher)
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.JUDGE, FailureCategory.CANCELLED, 0)
    assert model.calls == []


async def test_a_batch_without_a_judge_gets_an_empty_judgment_without_a_call() -> None:
    model = FakeJudge()
    [out] = await on_prompt_responded(
        responded("b-off", 0, judge_enabled=False), JudgeBatcher(model, ENDPOINTS, linger_s=LINGER_S)
    )
    assert isinstance(out, PromptJudged) and out.judgments == [] and out.judge_model is None
    assert model.calls == []
