"""One prompt through the model under test: a response event, or a failure event with its category."""

from collections.abc import Container

from contracts.enums import FailureCategory, Stage
from contracts.events import PromptFailed, PromptQueued, PromptResponded, Usage
from services.runtime.cancels import cancelled_failure
from services.runtime.endpoints import EndpointRejected, Endpoints
from services.runtime.llm import CallOptions, ChatModel, ModelCallError
from services.runtime.pricing import cost_usd


async def run_prompt(
    model: ChatModel, evt: PromptQueued, endpoints: Endpoints, cancelled: Container[str] = ()
) -> PromptResponded | PromptFailed:
    if evt.batch_id in cancelled:
        return cancelled_failure(evt, Stage.CHAT)
    cfg = evt.config
    try:
        endpoint = endpoints.for_model(cfg)
    except EndpointRejected as exc:  # checked at the start too; an event on the subject may say otherwise
        return PromptFailed(
            batch_id=evt.batch_id,
            prompt_id=evt.prompt_id,
            index=evt.index,
            stage=Stage.CHAT,
            category=FailureCategory.INVALID_INPUT,
            error=f"model endpoint: {exc}"[:4000],
            attempts=0,
        )
    opts = CallOptions(
        model=cfg.model,
        endpoint=endpoint,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        temperature=cfg.temperature,
        max_tokens=cfg.max_tokens,
        retry_base_s=cfg.retry_base_s,
    )
    messages = [{"role": m.role, "content": m.content} for m in evt.messages]
    tags = {"X-Evalbus-Prompt-Id": evt.prompt_id, "X-Evalbus-Stage": Stage.CHAT.value}
    try:
        done = await model.complete(messages, opts, batch_id=evt.batch_id, batch_limit=cfg.concurrency, tags=tags)
    except ModelCallError as exc:
        return PromptFailed(
            batch_id=evt.batch_id,
            prompt_id=evt.prompt_id,
            index=evt.index,
            stage=Stage.CHAT,
            category=exc.category,
            error=str(exc)[:4000],
            attempts=exc.attempts,
        )
    return PromptResponded(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        messages=evt.messages,
        answer=done.text,
        finish_reason=done.finish_reason,
        model=cfg.model,
        usage=Usage(
            tokens_in=done.tokens_in,
            tokens_out=done.tokens_out,
            latency_ms=done.latency_ms,
            attempts=done.attempts,
            cost_usd=cost_usd(cfg.model, cfg, done.tokens_in, done.tokens_out),
        ),
        expected=evt.expected,
        references=evt.references,
        config=cfg,
    )
