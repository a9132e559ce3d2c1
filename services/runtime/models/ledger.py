"""The call ledger: every model call a handler run makes, as `call.billed` events.

A `Meter` wraps the model client for one handler run (or one judge grading) and notes each call
with all its attempts, answered or not. Its events go out beside the run's own: the prompt's event
may be a repeat the recorder drops (a redelivery after a crash between the call and the ack), the
bill never is, since each call gets a fresh id.
"""

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from contracts.bounds import INT_MAX
from contracts.enums import Stage
from contracts.events import MAX_CALL_ATTEMPTS, MAX_CALL_PROMPTS, CallAttempt, CallBilled
from contracts.inputs import BatchConfig
from contracts.pricing import cost_usd
from contracts.text import storable_text
from services.runtime.models.client import OK, Attempt, CallOptions, ChatModel, Completion, ModelCallError

PROMPT_TAG = "X-Evalbus-Prompt-Id"  # the prompts a call is about, comma-separated (a batched judge call)
STAGE_TAG = "X-Evalbus-Stage"


@dataclass(frozen=True)
class Noted:
    """One call as it ended."""

    call_id: str
    batch_id: str
    opts: CallOptions
    tags: dict[str, str]
    attempts: tuple[Attempt, ...]


def _attempts(result: Completion | ModelCallError) -> tuple[Attempt, ...]:
    """The call's attempts; a client that keeps no log (a fake) stands for one attempt."""
    if result.attempt_log:
        return result.attempt_log
    if isinstance(result, Completion):
        return (Attempt(OK, 200, result.tokens_in, result.tokens_out, result.latency_ms),)
    return (Attempt.failed(result, 0.0),)


class Meter:
    """A ChatModel that notes each call it passes on to `model`."""

    def __init__(self, model: ChatModel) -> None:
        self._model = model
        self.noted: list[Noted] = []

    async def complete(
        self,
        messages: list[dict[str, str]],
        opts: CallOptions,
        *,
        batch_id: str,
        batch_limit: int,
        tags: Mapping[str, str],
    ) -> Completion:
        call_id = str(uuid.uuid4())  # never derived: a re-run of the same work is another bill
        try:
            done = await self._model.complete(messages, opts, batch_id=batch_id, batch_limit=batch_limit, tags=tags)
        except ModelCallError as exc:
            self.noted.append(Noted(call_id, batch_id, opts, dict(tags), _attempts(exc)))
            raise
        self.noted.append(Noted(call_id, batch_id, opts, dict(tags), _attempts(done)))
        return done

    def billed(self, cfg: BatchConfig) -> list[CallBilled]:
        """The noted calls as ledger events, priced with the batch's rates."""
        return [bill(n, cfg) for n in self.noted]


def _count(n: int | None) -> int | None:
    return None if n is None else min(max(n, 0), INT_MAX)


def bill(noted: Noted, cfg: BatchConfig) -> CallBilled:
    attempts = [
        CallAttempt(
            outcome=a.outcome,
            status=a.status if a.status is not None and 0 <= a.status <= 999 else None,
            tokens_in=_count(a.tokens_in),
            tokens_out=_count(a.tokens_out),
            latency_ms=min(max(a.latency_ms, 0.0), 1e9),
            retry_in_s=None if a.retry_in_s is None else min(max(a.retry_in_s, 0.0), 1e6),
            reason=storable_text(a.reason, 300),
        )
        for a in noted.attempts[-MAX_CALL_ATTEMPTS:]
    ]
    tokens_in = min(sum(a.tokens_in or 0 for a in attempts), INT_MAX)
    tokens_out = min(sum(a.tokens_out or 0 for a in attempts), INT_MAX)
    prompt_ids = [p for p in noted.tags.get(PROMPT_TAG, "").split(",") if p][:MAX_CALL_PROMPTS]
    return CallBilled(
        batch_id=noted.batch_id,
        call_id=noted.call_id,
        stage=Stage(noted.tags.get(STAGE_TAG, Stage.CHAT.value)),
        prompt_ids=prompt_ids,
        endpoint=storable_text(noted.opts.endpoint.url, 500),
        model=noted.opts.model,
        attempts=attempts,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        cost_usd=cost_usd(noted.opts.model, cfg, tokens_in, tokens_out),
    )
