"""One prompt through the model under test: the call it makes, and the response built from what
came back. A model's output is untrusted too: the events built from it must still be valid (the
contracts refuse NUL, lone surrogates and out-of-range counts), so it is kept made storable."""

from contracts.bounds import INT_MAX
from contracts.enums import FailureCategory
from contracts.events import PromptFailed, PromptQueued, PromptResponded
from contracts.inputs import BatchConfig, ChatMessage
from contracts.text import storable
from services.chat_runner.logic import run_prompt
from services.runtime.models.client import Completion, ModelCallError
from tests.factories import BatchEvents, sample
from tests.unit.chat_runner.fakes import FakeModel
from tests.unit.judge.fakes import ENDPOINTS

QUEUED = sample(PromptQueued)


async def test_the_call_carries_the_batchs_settings_messages_and_tags() -> None:
    cfg = BatchConfig(
        model="gpt-4o-mini", timeout_s=9, max_retries=4, temperature=0.3, max_tokens=77, retry_base_s=0.5, concurrency=6
    )
    messages = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="hi")]
    evt = BatchEvents("b-call", 3, config=cfg).queued(2, messages=messages)
    model = FakeModel()
    await run_prompt(model, evt, ENDPOINTS)
    [call] = model.calls
    assert call.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert (call.opts.model, call.opts.endpoint.name) == ("gpt-4o-mini", "default")
    assert (call.opts.timeout_s, call.opts.max_retries, call.opts.retry_base_s) == (9, 4, 0.5)
    assert (call.opts.temperature, call.opts.max_tokens, call.opts.response_format) == (0.3, 77, None)
    assert (call.batch_id, call.batch_limit) == ("b-call", 6)
    assert call.tags == {"X-Evalbus-Prompt-Id": "b-call-000002", "X-Evalbus-Stage": "chat"}


async def test_the_response_keeps_the_prompt_and_prices_its_tokens() -> None:
    cfg = BatchConfig(model="m", input_cost_per_mtok=2.0, output_cost_per_mtok=10.0)
    evt = BatchEvents("b-cost", config=cfg).queued(0, expected="Paris")
    done = Completion("Paris", "length", tokens_in=1000, tokens_out=100, latency_ms=40.0, attempts=2)
    out = await run_prompt(FakeModel(done), evt, ENDPOINTS)
    assert isinstance(out, PromptResponded)
    assert (out.prompt_id, out.index, out.messages, out.expected) == (evt.prompt_id, 0, evt.messages, "Paris")
    assert (out.answer, out.finish_reason, out.model, out.config) == ("Paris", "length", "m", cfg)
    assert (out.usage.tokens_in, out.usage.tokens_out, out.usage.latency_ms, out.usage.attempts) == (1000, 100, 40.0, 2)
    assert out.usage.cost_usd == (1000 * 2.0 + 100 * 10.0) / 1_000_000


async def test_a_missing_finish_reason_stays_missing() -> None:
    done = Completion("ok", None, 1, 1, 1.0, 1)
    out = await run_prompt(FakeModel(done), BatchEvents("b-fin").queued(0), ENDPOINTS)
    assert isinstance(out, PromptResponded) and out.finish_reason is None


async def test_an_answer_with_nul_and_lone_surrogates_is_kept_storable() -> None:
    done = Completion(
        text="ok\x00\ud800 done", finish_reason="stop\x00", tokens_in=2**40, tokens_out=-5, latency_ms=1.0, attempts=1
    )
    out = await run_prompt(FakeModel(done), QUEUED, ENDPOINTS)
    assert isinstance(out, PromptResponded)
    assert out.answer == "ok\ufffd\ufffd done" and out.finish_reason == "stop\ufffd"
    assert (out.usage.tokens_in, out.usage.tokens_out) == (INT_MAX, 0)
    assert PromptResponded.model_validate_json(out.to_json()) == out


async def test_an_error_quoting_a_response_body_is_kept_storable() -> None:
    error = ModelCallError(FailureCategory.SERVER_ERROR, "HTTP 500: \x00" + "x" * 9000, retryable=False)
    out = await run_prompt(FakeModel(error), QUEUED, ENDPOINTS)
    assert isinstance(out, PromptFailed)
    assert storable(out.error) == out.error and len(out.error) <= 4000
