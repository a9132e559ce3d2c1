"""The judge's micro-batcher with a fake model: when groups flush, what each answer is charged,
and that one group's trouble stays in that group."""

import asyncio
import time

import pytest

from contracts.enums import FailureCategory
from contracts.events import PromptFailed, PromptJudged, PromptResponded
from contracts.pricing import cost_usd
from services.judge.batcher import JudgeBatcher
from services.judge.logic import judge_prompt
from tests.unit.judge.fakes import ENDPOINTS, Call, FakeJudge, responded, score, unavailable

LONG = 10.0  # a linger no test waits for: groups in these tests flush because they are full


async def judge_all(batcher: JudgeBatcher, evts: list[PromptResponded]) -> list[PromptJudged | PromptFailed]:
    return await asyncio.wait_for(asyncio.gather(*(batcher.judge(e) for e in evts)), 5)


def judged(results: list[PromptJudged | PromptFailed]) -> list[PromptJudged]:
    assert all(isinstance(r, PromptJudged) for r in results), results
    return [r for r in results if isinstance(r, PromptJudged)]


async def test_a_group_flushes_as_soon_as_it_holds_k_answers() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=LONG)
    evts = [responded("b-one", i, judge_batch_size=3) for i in range(3)]
    out = judged(await judge_all(batcher, evts))  # within judge_all's 5 s: it did not wait for the linger
    assert len(model.calls) == 1 and model.calls[0].batched and model.calls[0].schema == "evalbus_judgment_batch"
    assert model.calls[0].answers == [e.answer for e in evts]
    assert model.calls[0].tags["X-Evalbus-Prompt-Id"] == ",".join(e.prompt_id for e in evts)
    assert [r.prompt_id for r in out] == [e.prompt_id for e in evts]
    for evt, r in zip(evts, out, strict=True):
        assert [(j.criterion, j.score) for j in r.judgments] == [(c, score(evt.answer, c)) for c in evt.config.criteria]
        assert (r.calls.share, r.calls.unbatched, r.calls.batch_size, r.calls.fallback) == (1 / 3, 1, 3, False)
    assert batcher.waiting == 0


async def test_a_group_short_of_k_flushes_when_the_linger_runs_out() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.15)
    evts = [responded("b-one", i) for i in range(2)]  # K = 10 by default
    started = time.monotonic()
    task = asyncio.ensure_future(judge_all(batcher, evts))
    await asyncio.sleep(0.05)
    assert batcher.waiting == 2 and not model.calls
    out = judged(await task)
    assert time.monotonic() - started >= 0.15
    assert len(model.calls) == 1 and model.calls[0].answers == [e.answer for e in evts]
    assert [r.calls.batch_size for r in out] == [2, 2] and [r.calls.share for r in out] == [0.5, 0.5]


async def test_more_than_k_answers_make_full_calls_then_a_lingering_rest() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    evts = [responded("b-one", i, judge_batch_size=4) for i in range(10)]
    out = judged(await judge_all(batcher, evts))
    assert [len(c.answers) for c in model.calls] == [4, 4, 2]
    assert [r.calls.batch_size for r in out] == [4] * 8 + [2] * 2
    assert sum(r.calls.share for r in out) == pytest.approx(3)


async def test_answers_are_grouped_by_batch_and_by_config() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    evts = [
        *(responded("b-red", i) for i in range(3)),
        *(responded("b-blue", i) for i in range(2)),
        *(responded("b-red", i, criteria=["accuracy"]) for i in range(3, 5)),  # another judge config
    ]
    judged(await judge_all(batcher, evts))
    groups = sorted((c.batch_id, len(c.answers), tuple(c.criteria)) for c in model.calls)
    assert groups == [
        ("b-blue", 2, ("accuracy", "clarity")),
        ("b-red", 2, ("accuracy",)),
        ("b-red", 3, ("accuracy", "clarity")),
    ]


async def test_a_failed_call_fails_its_own_group_only() -> None:
    model = FakeJudge(fail=lambda call: unavailable(call) if call.batch_id == "b-down" else None)
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    down = [responded("b-down", i) for i in range(3)]
    up = [responded("b-up", i) for i in range(3)]
    out = await judge_all(batcher, [*down, *up])
    for r in out[:3]:
        assert isinstance(r, PromptFailed)
        assert (r.category, r.attempts, r.stage.value) == (FailureCategory.SERVER_ERROR, 3, "judge")
    judged(out[3:])
    assert sum(c.batch_id == "b-down" for c in model.calls) == 1  # a call error is not a reason to fall back


async def test_an_unexpected_error_reaches_only_the_handlers_of_its_group() -> None:
    model = FakeJudge(fail=lambda call: RuntimeError("bug") if call.batch_id == "b-bug" else None)
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    bug = [asyncio.ensure_future(batcher.judge(responded("b-bug", i))) for i in range(2)]
    fine = [asyncio.ensure_future(batcher.judge(responded("b-fine", i))) for i in range(2)]
    for task in bug:  # the handler raises: its message is negatively acked and redelivered
        with pytest.raises(RuntimeError, match="bug"):
            await asyncio.wait_for(task, 5)
    judged([await asyncio.wait_for(t, 5) for t in fine])


async def test_an_unusable_batched_reply_falls_back_to_one_by_one_grading_for_that_chunk() -> None:
    model = FakeJudge(broken=lambda call: call.batched and any("MARK" in a for a in call.answers))
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    evts = [responded("b-one", i, judge_batch_size=3) for i in range(6)]
    evts[1] = responded("b-one", 1, "MARK in this answer", judge_batch_size=3)
    out = judged(await judge_all(batcher, evts))
    batched = [c for c in model.calls if c.batched]
    alone = [c for c in model.calls if not c.batched]
    assert len(batched) == 2 and len(alone) == 3
    assert sorted(a for c in alone for a in c.answers) == sorted(e.answer for e in evts[:3])
    assert all(c.schema == "evalbus_judgment" and c.tags["X-Evalbus-Prompt-Id"].count(",") == 0 for c in alone)
    for r in out[:3]:
        assert (r.calls.share, r.calls.batch_size, r.calls.fallback) == (pytest.approx(1 + 1 / 3), 1, True)
        assert r.usage.attempts == 2 and r.usage.latency_ms == 25.0  # the bad call, then its own
    for r in out[3:]:
        assert (r.calls.share, r.calls.batch_size, r.calls.fallback) == (pytest.approx(1 / 3), 3, False)
    # the same scores as grading each answer alone
    for evt, r in zip(evts, out, strict=True):
        single = await judge_prompt(FakeJudge(), evt, ENDPOINTS)
        assert isinstance(single, PromptJudged) and single.judgments == r.judgments
    # every call's tokens are charged in full: 2 batched + 3 single calls of 1000 in, 90 out
    assert sum(r.usage.tokens_in for r in out) == 5 * 1000 and sum(r.usage.tokens_out for r in out) == 5 * 90


async def test_a_fallback_answer_that_fails_alone_fails_with_its_own_reason() -> None:
    model = FakeJudge(broken=lambda call: True)
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    out = await judge_all(batcher, [responded("b-one", i) for i in range(2)])
    for r in out:
        assert isinstance(r, PromptFailed) and r.category == FailureCategory.JUDGE_PARSE_ERROR
        assert r.error.startswith("graded alone after an unusable batched reply") and r.raw_output
        assert r.attempts == 2


async def test_batched_token_usage_is_apportioned_in_integers_that_sum_to_the_call() -> None:
    model = FakeJudge(usage=(1001, 91))
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    evts = [responded("b-one", i) for i in range(3)]  # answers of growing length
    out = judged(await judge_all(batcher, evts))
    tin = [r.usage.tokens_in for r in out]
    tout = [r.usage.tokens_out for r in out]
    assert sum(tin) == 1001 and sum(tout) == 91
    assert tin[0] < tin[1] < tin[2]  # a longer answer took more of the prompt
    assert max(tout) - min(tout) <= 1
    assert sum(r.usage.cost_usd for r in out) == pytest.approx(cost_usd("gpt-4o-mini", evts[0].config, 1001, 91))
    assert all(r.usage.latency_ms == 12.5 and r.usage.attempts == 1 for r in out)


async def test_per_criterion_mode_makes_one_batched_call_per_criterion_and_merges() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    criteria = ["accuracy", "clarity", "safety"]
    evts = [responded("b-one", i, criteria=criteria, judge_mode="per_criterion") for i in range(2)]
    out = judged(await judge_all(batcher, evts))
    assert sorted(c.criteria[0] for c in model.calls) == criteria
    assert all(len(c.criteria) == 1 and len(c.answers) == 2 for c in model.calls)
    for evt, r in zip(evts, out, strict=True):
        assert [(j.criterion, j.score) for j in r.judgments] == [(c, score(evt.answer, c)) for c in criteria]
        assert (r.calls.share, r.calls.unbatched, r.calls.batch_size) == (pytest.approx(1.5), 3, 2)
        assert r.usage.latency_ms == 12.5  # the three calls ran at once


async def test_per_criterion_mode_fails_the_answer_when_one_criterions_call_fails() -> None:
    model = FakeJudge(fail=lambda call: unavailable(call) if call.criteria == ["clarity"] else None)
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    evts = [responded("b-one", i, judge_mode="per_criterion") for i in range(2)]
    out = await judge_all(batcher, evts)
    assert all(isinstance(r, PromptFailed) and r.category == FailureCategory.SERVER_ERROR for r in out)


async def test_batch_size_one_grades_every_answer_alone_right_away() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=LONG)
    out = judged(await judge_all(batcher, [responded("b-one", i, judge_batch_size=1) for i in range(3)]))
    assert len(model.calls) == 3 and not any(c.batched for c in model.calls)
    assert all((r.calls.share, r.calls.unbatched, r.calls.batch_size) == (1, 1, 1) for r in out)
    per = [responded("b-two", 0, judge_batch_size=1, judge_mode="per_criterion")]
    [r] = judged(await judge_all(batcher, per))
    assert (r.calls.share, r.calls.unbatched) == (2, 2)


async def test_cancelled_batches_and_disabled_judges_make_no_call() -> None:
    model = FakeJudge()
    cancelled: set[str] = {"b-gone"}
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.1, cancelled=cancelled)
    [gone] = await judge_all(batcher, [responded("b-gone", 0)])
    assert isinstance(gone, PromptFailed) and gone.category == FailureCategory.CANCELLED
    [off] = judged(await judge_all(batcher, [responded("b-off", 0, judge_enabled=False)]))
    assert off.judgments == [] and (off.calls.share, off.calls.unbatched) == (0, 0)
    # cancelled while waiting for its group to fill: no call either
    waiting = asyncio.ensure_future(judge_all(batcher, [responded("b-late", i) for i in range(2)]))
    await asyncio.sleep(0.02)
    cancelled.add("b-late")
    assert all(isinstance(r, PromptFailed) and r.category == FailureCategory.CANCELLED for r in await waiting)
    assert model.calls == []


async def test_a_cancelled_handler_does_not_break_its_group() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    first = asyncio.ensure_future(batcher.judge(responded("b-one", 0)))
    second = asyncio.ensure_future(batcher.judge(responded("b-one", 1)))
    await asyncio.sleep(0.01)
    first.cancel()
    assert isinstance(await asyncio.wait_for(second, 5), PromptJudged)
    assert isinstance(model.calls[0], Call) and len(model.calls[0].answers) == 2


async def test_an_unlisted_judge_url_fails_its_answers_without_a_call() -> None:
    model = FakeJudge()
    batcher = JudgeBatcher(model, ENDPOINTS, linger_s=0.05)
    evts = [responded("b-url", i, judge_base_url="http://collector.test/v1") for i in range(3)]
    named = [responded("b-name", i, judge_endpoint="nope") for i in range(2)]
    results = await judge_all(batcher, evts + named)
    assert model.calls == []
    assert all(isinstance(r, PromptFailed) and r.category is FailureCategory.INVALID_INPUT for r in results)
    assert all(r.attempts == 0 and r.error.startswith("judge endpoint: ") for r in results)  # type: ignore[union-attr]
    assert "is not a configured endpoint" in results[0].error  # type: ignore[union-attr]
    assert "no endpoint named 'nope'" in results[-1].error  # type: ignore[union-attr]
