"""A batch's safety settings on the chat-runner's model call: its timeout, retries, breaker and limit."""

from contracts.inputs import BatchConfig
from services.chat_runner.logic import run_prompt
from tests.factories import BatchEvents
from tests.unit.chat_runner.fakes import FakeModel
from tests.unit.judge.fakes import ENDPOINTS


async def test_the_model_call_carries_the_batchs_breaker_and_not_the_judges_settings() -> None:
    cfg = BatchConfig(
        model="m",
        concurrency=5,
        timeout_s=11,
        judge_concurrency=2,
        judge_timeout_s=99,
        breaker_fail_max=3,
        breaker_reset_s=7.5,
    )
    model = FakeModel()
    await run_prompt(model, BatchEvents("b-tune", config=cfg).queued(0), ENDPOINTS)
    [call] = model.calls
    assert (call.opts.timeout_s, call.batch_limit) == (11, 5)  # the model's, not the judge's
    assert (call.opts.breaker_fail_max, call.opts.breaker_reset_s) == (3, 7.5)


async def test_without_breaker_settings_the_call_leaves_them_to_the_client() -> None:
    model = FakeModel()
    await run_prompt(model, BatchEvents("b-tune").queued(0), ENDPOINTS)
    [call] = model.calls
    assert call.opts.breaker_fail_max is call.opts.breaker_reset_s is None
