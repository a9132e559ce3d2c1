"""One prompt through the model under test: a response event, or a failure event with its category."""

from collections.abc import Container

from contracts.bounds import INT_MAX, MAX_ANSWER
from contracts.enums import FailureCategory, Stage
from contracts.events import PromptFailed, PromptQueued, PromptResponded, Usage
from contracts.pricing import cost_usd
from contracts.text import storable_text
from services.runtime.models.client import CallOptions, ChatModel, ModelCallError
from services.runtime.models.endpoints import EndpointRejected, Endpoints


async def run_prompt(
    model: ChatModel, evt: PromptQueued, endpoints: Endpoints, cancelled: Container[str] = ()
) -> PromptResponded | PromptFailed:
    if evt.batch_id in cancelled:
        return PromptFailed.cancelled(evt, Stage.CHAT)
    cfg = evt.config
    try:
        endpoint = endpoints.for_model(cfg)
    except EndpointRejected as exc:  # checked at the start too; an event on the subject may say otherwise
        return PromptFailed.of(evt, Stage.CHAT, FailureCategory.INVALID_INPUT, f"model endpoint: {exc}", attempts=0)
    opts = CallOptions(
        model=cfg.model,
        endpoint=endpoint,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        retry_base_s=cfg.retry_base_s,
        breaker_fail_max=cfg.breaker_fail_max,
        breaker_reset_s=cfg.breaker_reset_s,
    )
    messages = [{"role": m.role, "content": m.content} for m in evt.messages]
    tags = {"X-Evalbus-Prompt-Id": evt.prompt_id, "X-Evalbus-Stage": Stage.CHAT.value}
    try:
        done = await model.complete(messages, opts, batch_id=evt.batch_id, batch_limit=cfg.concurrency, tags=tags)
    except ModelCallError as exc:
        return PromptFailed.of(evt, Stage.CHAT, exc.category, str(exc), attempts=exc.attempts)
    # The model's output is kept as it came, made storable (NUL and lone surrogates become
    # U+FFFD) and bounded, so that the event can be built whatever the endpoint sent.
    tokens_in, tokens_out = (min(max(n, 0), INT_MAX) for n in (done.tokens_in, done.tokens_out))
    return PromptResponded(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        messages=evt.messages,
        answer=storable_text(done.text, MAX_ANSWER),
        finish_reason=storable_text(str(done.finish_reason), 100) if done.finish_reason is not None else None,
        model=cfg.model,
        usage=Usage(
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            latency_ms=done.latency_ms,
            attempts=done.attempts,
            cost_usd=cost_usd(cfg.model, cfg, tokens_in, tokens_out),
        ),
        expected=evt.expected,
        references=evt.references,
        config=cfg,
    )
