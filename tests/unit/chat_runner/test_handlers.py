"""The chat-runner's handler with a fake model: what each queued prompt becomes."""

from contracts.enums import FailureCategory, Stage
from contracts.events import PromptFailed, PromptResponded
from contracts.inputs import BatchConfig
from services.chat_runner.handlers import on_prompt_queued
from services.runtime.models.client import ModelCallError
from tests.factories import BatchEvents
from tests.unit.chat_runner.fakes import FakeModel, completion
from tests.unit.judge.fakes import ENDPOINTS

BATCH = BatchEvents("b-chat", 2)


async def test_an_answered_prompt_is_responded() -> None:
    model = FakeModel(completion("Paris", tokens_in=10, tokens_out=3))
    out = await on_prompt_queued(BATCH.queued(1), model, ENDPOINTS, cancelled=set())
    assert isinstance(out, PromptResponded)
    assert (out.batch_id, out.prompt_id, out.index, out.answer) == ("b-chat", "b-chat-000001", 1, "Paris")
    assert (out.usage.tokens_in, out.usage.tokens_out) == (10, 3)
    assert len(model.calls) == 1


async def test_a_model_error_fails_the_prompt_with_its_category_and_attempts() -> None:
    error = ModelCallError(FailureCategory.RATE_LIMIT, "HTTP 429: slow down", retryable=True)
    error.attempts = 3
    out = await on_prompt_queued(BATCH.queued(0), FakeModel(error), ENDPOINTS, cancelled=set())
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts, out.error) == (
        Stage.CHAT,
        FailureCategory.RATE_LIMIT,
        3,
        "HTTP 429: slow down",
    )


async def test_a_prompt_of_a_cancelled_batch_fails_as_cancelled_without_a_call() -> None:
    model = FakeModel()
    out = await on_prompt_queued(BATCH.queued(0), model, ENDPOINTS, cancelled={"b-chat"})
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.CHAT, FailureCategory.CANCELLED, 0)
    assert model.calls == []
    other = await on_prompt_queued(BatchEvents("b-other").queued(0), model, ENDPOINTS, cancelled={"b-chat"})
    assert isinstance(other, PromptResponded)  # only the cancelled batch's prompts


async def test_an_endpoint_the_batch_may_not_use_fails_the_prompt_without_a_call() -> None:
    model = FakeModel()
    cfg = BatchConfig(model="m", base_url="http://elsewhere.test/v1")
    out = await on_prompt_queued(BatchEvents("b-chat", config=cfg).queued(0), model, ENDPOINTS, cancelled=set())
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.CHAT, FailureCategory.INVALID_INPUT, 0)
    assert out.error.startswith("model endpoint: base URL http://elsewhere.test/v1 is not a configured endpoint")
    assert model.calls == []
