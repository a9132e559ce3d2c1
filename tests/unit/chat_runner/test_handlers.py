"""The chat-runner's handler with a fake model: what each queued prompt becomes, and its bill."""

import uuid

from contracts.enums import FailureCategory, Stage
from contracts.events import CallBilled, PromptFailed, PromptResponded
from contracts.inputs import BatchConfig
from services.chat_runner.handlers import on_prompt_queued
from services.runtime.models.client import Attempt, Completion, ModelCallError
from tests.factories import BatchEvents
from tests.unit.chat_runner.fakes import FakeModel, completion
from tests.unit.judge.fakes import ENDPOINTS

BATCH = BatchEvents("b-chat", 2)


async def test_an_answered_prompt_is_responded_and_billed() -> None:
    model = FakeModel(completion("Paris", tokens_in=10, tokens_out=3))
    out, bill = await on_prompt_queued(BATCH.queued(1), model, ENDPOINTS, cancelled=set())
    assert isinstance(out, PromptResponded)
    assert (out.batch_id, out.prompt_id, out.index, out.answer) == ("b-chat", "b-chat-000001", 1, "Paris")
    assert (out.usage.tokens_in, out.usage.tokens_out) == (10, 3)
    assert len(model.calls) == 1
    assert isinstance(bill, CallBilled)
    assert (bill.batch_id, bill.prompt_ids, bill.stage, bill.model) == ("b-chat", ["b-chat-000001"], Stage.CHAT, "m")
    assert (bill.tokens_in, bill.tokens_out, bill.cost_usd) == (10, 3, out.usage.cost_usd)
    assert bill.endpoint == model.calls[0].opts.endpoint.url
    assert [a.outcome for a in bill.attempts] == ["ok"]
    assert bill.event_id == bill.call_id and uuid.UUID(bill.call_id).version == 4


async def test_each_run_is_a_bill_of_its_own_even_for_the_same_prompt() -> None:
    """A redelivered prompt's second run calls the model again: the same response event id (the
    recorder keeps the first), but a second bill."""
    model = FakeModel(completion("Paris"))
    first = await on_prompt_queued(BATCH.queued(0), model, ENDPOINTS, cancelled=set())
    again = await on_prompt_queued(BATCH.queued(0), model, ENDPOINTS, cancelled=set())
    assert first[0].event_id == again[0].event_id
    assert isinstance(first[1], CallBilled) and isinstance(again[1], CallBilled)
    assert first[1].call_id != again[1].call_id and first[1].event_id != again[1].event_id


async def test_every_attempt_of_a_retried_call_is_billed() -> None:
    attempts = (
        Attempt("rate_limit", 429, latency_ms=3.0, retry_in_s=2.1, reason="HTTP 429: slow down"),
        Attempt("server_error", 500, latency_ms=4.0, retry_in_s=0.5, reason="HTTP 500: oops"),
        Attempt("ok", 200, 10, 3, 12.5),
    )
    done = Completion("Paris", "stop", 10, 3, latency_ms=12.5, attempts=3, attempt_log=attempts)
    out, bill = await on_prompt_queued(BATCH.queued(0), FakeModel(done), ENDPOINTS, cancelled=set())
    assert isinstance(out, PromptResponded) and out.usage.attempts == 3
    assert isinstance(bill, CallBilled)
    assert [(a.outcome, a.status, a.retry_in_s) for a in bill.attempts] == [
        ("rate_limit", 429, 2.1),
        ("server_error", 500, 0.5),
        ("ok", 200, None),
    ]
    assert bill.attempts[0].reason == "HTTP 429: slow down"
    assert (bill.tokens_in, bill.tokens_out) == (10, 3)


async def test_a_model_error_fails_the_prompt_and_bills_its_attempts() -> None:
    error = ModelCallError(FailureCategory.RATE_LIMIT, "HTTP 429: slow down", retryable=True)
    error.attempts = 3
    error.attempt_log = tuple(Attempt("rate_limit", 429, latency_ms=2.0, retry_in_s=1.0) for _ in range(3))
    out, bill = await on_prompt_queued(BATCH.queued(0), FakeModel(error), ENDPOINTS, cancelled=set())
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts, out.error) == (
        Stage.CHAT,
        FailureCategory.RATE_LIMIT,
        3,
        "HTTP 429: slow down",
    )
    assert isinstance(bill, CallBilled)
    assert bill.outcome == "rate_limit" and len(bill.attempts) == 3
    assert (bill.tokens_in, bill.tokens_out, bill.cost_usd) == (0, 0, 0.0)


async def test_a_prompt_of_a_cancelled_batch_fails_as_cancelled_without_a_call_or_bill() -> None:
    model = FakeModel()
    [out] = await on_prompt_queued(BATCH.queued(0), model, ENDPOINTS, cancelled={"b-chat"})
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.CHAT, FailureCategory.CANCELLED, 0)
    assert model.calls == []
    other, _ = await on_prompt_queued(BatchEvents("b-other").queued(0), model, ENDPOINTS, cancelled={"b-chat"})
    assert isinstance(other, PromptResponded)  # only the cancelled batch's prompts


async def test_an_endpoint_the_batch_may_not_use_fails_the_prompt_without_a_call_or_bill() -> None:
    model = FakeModel()
    cfg = BatchConfig(model="m", base_url="http://elsewhere.test/v1")
    [out] = await on_prompt_queued(BatchEvents("b-chat", config=cfg).queued(0), model, ENDPOINTS, cancelled=set())
    assert isinstance(out, PromptFailed)
    assert (out.stage, out.category, out.attempts) == (Stage.CHAT, FailureCategory.INVALID_INPUT, 0)
    assert out.error.startswith("model endpoint: base URL http://elsewhere.test/v1 is not a configured endpoint")
    assert model.calls == []
