"""A batch's safety settings on the judge's calls: its own timeout and concurrency (else the
model's), the batch's retries and breaker, and its chunk size."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from contracts.events import PromptJudged
from contracts.inputs import BatchConfig
from services.judge.logic import call_options, grade_group
from services.runtime.models.client import CallOptions, Completion
from tests.unit.judge.fakes import ENDPOINTS, FakeJudge, responded


@dataclass
class RecordingJudge(FakeJudge):
    """The fake judge, keeping each call's options and batch limit too."""

    options: list[tuple[CallOptions, int]] = field(default_factory=list)

    async def complete(
        self,
        messages: list[dict[str, str]],
        opts: CallOptions,
        *,
        batch_id: str,
        batch_limit: int,
        tags: Mapping[str, str],
    ) -> Completion:
        self.options.append((opts, batch_limit))
        return await super().complete(messages, opts, batch_id=batch_id, batch_limit=batch_limit, tags=tags)


def test_judge_options_take_the_judges_timeout_and_the_batchs_retries_and_breaker() -> None:
    cfg = BatchConfig(
        model="m",
        timeout_s=10,
        judge_timeout_s=240,
        max_retries=5,
        retry_base_s=0.25,
        breaker_fail_max=2,
        breaker_reset_s=4,
    )
    opts = call_options(cfg, ENDPOINTS)
    assert (opts.timeout_s, opts.max_retries, opts.retry_base_s) == (240, 5, 0.25)
    assert (opts.breaker_fail_max, opts.breaker_reset_s) == (2, 4)


def test_without_a_judge_timeout_the_judge_has_the_models() -> None:
    assert call_options(BatchConfig(model="m", timeout_s=33), ENDPOINTS).timeout_s == 33


async def test_judge_calls_hold_to_the_judge_concurrency_and_chunk_size() -> None:
    judge = RecordingJudge()
    evts = [responded("b-jt", i, concurrency=8, judge_concurrency=3, judge_batch_size=2) for i in range(5)]
    out = await grade_group(judge, evts, ENDPOINTS)
    assert all(isinstance(r, PromptJudged) for r in out)
    assert sorted(len(c.answers) for c in judge.calls) == [1, 2, 2]  # chunks of 2
    assert {limit for _, limit in judge.options} == {3}


async def test_without_a_judge_concurrency_the_judge_follows_the_models() -> None:
    judge = RecordingJudge()
    await grade_group(judge, [responded("b-jt", 0, concurrency=8)], ENDPOINTS)
    assert [limit for _, limit in judge.options] == [8]
