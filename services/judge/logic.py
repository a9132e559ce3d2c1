"""One answer through the judge: a judged event, or a judge failure (never a made-up score)."""

from collections.abc import Container

from contracts.enums import FailureCategory, Stage
from contracts.events import JudgeCalls, PromptFailed, PromptJudged, PromptResponded, Usage
from services.judge.parsing import JudgeParseError, parse_judgment
from services.judge.prompt import build_messages, response_format
from services.runtime.cancels import cancelled_failure
from services.runtime.llm import CallOptions, ChatModel, ModelCallError
from services.runtime.pricing import cost_usd


def _failed(
    evt: PromptResponded, category: FailureCategory, error: str, attempts: int, raw: str | None = None
) -> PromptFailed:
    return PromptFailed(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        stage=Stage.JUDGE,
        category=category,
        error=error[:4000],
        attempts=attempts,
        raw_output=raw[:8000] if raw is not None else None,
    )


async def judge_prompt(
    model: ChatModel, evt: PromptResponded, default_base_url: str, cancelled: Container[str] = ()
) -> PromptJudged | PromptFailed:
    if evt.batch_id in cancelled:
        return cancelled_failure(evt, Stage.JUDGE)
    cfg = evt.config
    if not cfg.judge_enabled:
        return PromptJudged(
            batch_id=evt.batch_id,
            prompt_id=evt.prompt_id,
            index=evt.index,
            judge_model=None,
            judgments=[],
            usage=Usage(),
            answer=evt.answer,
            expected=evt.expected,
            references=evt.references,
            calls=JudgeCalls(share=0, unbatched=0),
            config=cfg,
        )
    opts = CallOptions(
        model=cfg.effective_judge_model,
        base_url=cfg.judge_base_url or cfg.base_url or default_base_url,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        temperature=0.0,
        response_format=response_format(cfg.criteria),
        retry_base_s=cfg.retry_base_s,
    )
    messages = build_messages(cfg, evt.messages, evt.answer, evt.expected)
    tags = {"X-Evalbus-Prompt-Id": evt.prompt_id, "X-Evalbus-Stage": Stage.JUDGE.value}
    try:
        done = await model.complete(messages, opts, batch_id=evt.batch_id, batch_limit=cfg.concurrency, tags=tags)
    except ModelCallError as exc:
        return _failed(evt, exc.category, str(exc), exc.attempts)
    try:
        judgments = parse_judgment(done.text, cfg)
    except JudgeParseError as exc:
        return _failed(evt, FailureCategory.JUDGE_PARSE_ERROR, str(exc), done.attempts, raw=done.text)
    return PromptJudged(
        batch_id=evt.batch_id,
        prompt_id=evt.prompt_id,
        index=evt.index,
        judge_model=opts.model,
        judgments=judgments,
        usage=Usage(
            tokens_in=done.tokens_in,
            tokens_out=done.tokens_out,
            latency_ms=done.latency_ms,
            attempts=done.attempts,
            cost_usd=cost_usd(opts.model, cfg, done.tokens_in, done.tokens_out),
        ),
        answer=evt.answer,
        expected=evt.expected,
        references=evt.references,
        config=cfg,
    )
