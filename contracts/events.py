"""The wire events: one per step of a prompt's life and of a batch's life, each on its subject
`evalbus.v1.batch.<batch_id>.<entity>.<verb>`, and `EVENT_TYPES`, the registry readers parse by.

Events are frozen pydantic models, JSON on the wire (`base.Event`). The commands a user sends
(`start.requested`, `cancel.requested`) are in `contracts.inputs`; every field's bound is in
`contracts.bounds`.
"""

from typing import Annotated, Any

from pydantic import Field, model_validator

from contracts.base import Event, Wire
from contracts.bounds import (
    CRITERION_PATTERN,
    INT_MAX,
    MAX_ANSWER,
    MAX_CRITERIA,
    MAX_ERROR,
    MAX_MESSAGES,
    MAX_NAME,
    MAX_RAW_OUTPUT,
    MAX_TEXT,
    SMALLINT_MAX,
    Count,
    Metadata,
    Usd,
)
from contracts.enums import BatchStatus, FailureCategory, Stage
from contracts.inputs import BatchConfig, CancelBatchRequested, ChatMessage, StartBatchRequested
from contracts.quality import QualityReport
from contracts.references import MAX_DETAIL, MAX_REFERENCES, ComponentScore, Reference
from contracts.reports import BatchReport
from contracts.text import StoredStr, storable_text

# A prompt's checks: its case's, its suite's shared ones, then its batch's.
MAX_PROMPT_REFERENCES = 3 * MAX_REFERENCES

# ---- batch lifecycle -------------------------------------------------------------------------


class BatchAccepted(Event):
    """The generator took a start: the batch runs, with this many prompts."""

    entity, verb = "batch", "accepted"
    config: BatchConfig
    suite_name: StoredStr = Field(max_length=MAX_NAME)
    total_prompts: int = Field(ge=1, le=INT_MAX)


class BatchRejected(Event):
    """The generator refused a start (a bad suite or config), with the reasons."""

    entity, verb = "batch", "rejected"
    reason: StoredStr = Field(max_length=MAX_ERROR)
    errors: list[Annotated[StoredStr, Field(max_length=MAX_ERROR)]] = Field(default_factory=list, max_length=50)
    # True: this answers a start of a batch id that an earlier start had already used (ids are
    # single-use). It says nothing about that batch, whose recorded state must not change.
    repeated_start: bool = False


class BatchCompleted(Event):
    """The recorder's final figures for a batch whose every prompt was scored or failed."""

    entity, verb = "batch", "completed"
    status: BatchStatus
    report: BatchReport
    quality: QualityReport | None = None


# ---- one prompt's stream of events ----------------------------------------------------------


class PromptEvent(Event):
    prompt_id: StoredStr = Field(min_length=1, max_length=MAX_NAME)
    index: int = Field(ge=0, le=INT_MAX)

    def id_keys(self) -> tuple[object, ...]:
        return (self.batch_id, self.prompt_id)


class PromptQueued(PromptEvent):
    """A case made a prompt, for the chat-runner to send to the model."""

    entity, verb = "prompt", "queued"
    case_id: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    # A case's messages and the batch's system prompt put before them.
    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES + 1)
    expected: StoredStr | None = Field(default=None, max_length=MAX_TEXT)
    references: list[Reference] = Field(default_factory=list, max_length=MAX_PROMPT_REFERENCES)
    metadata: Metadata = Field(default_factory=dict)
    config: BatchConfig


class Usage(Wire):
    tokens_in: Count = 0
    tokens_out: Count = 0
    latency_ms: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)
    attempts: int = Field(default=1, ge=1, le=SMALLINT_MAX)
    cost_usd: Usd = 0.0


class PromptResponded(PromptEvent):
    """The model's answer to a prompt, for the judge."""

    entity, verb = "prompt", "responded"
    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES + 1)
    answer: StoredStr = Field(max_length=MAX_ANSWER)
    finish_reason: StoredStr | None = Field(default=None, max_length=100)
    model: StoredStr = Field(max_length=MAX_NAME)
    usage: Usage
    expected: StoredStr | None = Field(default=None, max_length=MAX_TEXT)
    references: list[Reference] = Field(default_factory=list, max_length=MAX_PROMPT_REFERENCES)
    config: BatchConfig


class CriterionJudgment(Wire):
    criterion: str = Field(pattern=CRITERION_PATTERN)
    score: int = Field(ge=1, le=10, description="The judge's score on this criterion, 1-10.")
    passed: bool
    reasoning: StoredStr = Field(max_length=20_000)
    confidence: float = Field(ge=0, le=1, allow_inf_nan=False)
    suggestions: list[Annotated[StoredStr, Field(max_length=5000)]] = Field(default_factory=list, max_length=20)


class JudgeCalls(Wire):
    """How one answer's judgment was obtained, for the batch's judge metrics."""

    share: float = Field(
        default=1.0,
        ge=0,
        le=1000,
        allow_inf_nan=False,
        description="This answer's share of the judge's model calls: a call grading K answers counts 1/K "
        "to each (a failed batched call included).",
    )
    unbatched: int = Field(
        default=1,
        ge=0,
        le=SMALLINT_MAX,
        description="The calls this answer would have needed graded alone.",
    )
    batch_size: int = Field(
        default=1,
        ge=1,
        le=SMALLINT_MAX,
        description="Answers graded in the call that produced this judgment.",
    )
    fallback: bool = Field(
        default=False,
        description="Graded alone after its batched call came back unusable.",
    )


class PromptJudged(PromptEvent):
    """The judge's scores of an answer, per criterion, for the scorer."""

    entity, verb = "prompt", "judged"
    judge_model: StoredStr | None = Field(max_length=MAX_NAME)
    judgments: list[CriterionJudgment] = Field(max_length=MAX_CRITERIA)
    usage: Usage
    answer: StoredStr = Field(max_length=MAX_ANSWER)
    expected: StoredStr | None = Field(default=None, max_length=MAX_TEXT)
    references: list[Reference] = Field(default_factory=list, max_length=MAX_PROMPT_REFERENCES)
    calls: JudgeCalls = Field(default_factory=JudgeCalls)
    config: BatchConfig


class PromptScored(PromptEvent):
    """A prompt's verdict. Two scores, on two scales: `overall_score` is the judge's mean (1-10),
    `verdict_score` the weighted verdict over every component (0-1); `passed` follows the verdict."""

    entity, verb = "prompt", "scored"
    overall_score: float | None = Field(
        ge=1,
        le=10,
        allow_inf_nan=False,
        description="The judge's mean: the mean of its criterion scores, 1-10; null when not judged.",
    )
    passed: bool = Field(
        description="The verdict: every counted component passes or, with BatchConfig.pass_threshold set, "
        "verdict_score reaches it and no SQL check is a hard failure."
    )
    criteria_passed: dict[Annotated[str, Field(pattern=CRITERION_PATTERN)], bool] = Field(max_length=MAX_CRITERIA)
    reasons: list[Annotated[StoredStr, Field(max_length=2 * MAX_DETAIL)]] = Field(default_factory=list, max_length=100)
    verdict_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="The weighted verdict: the weighted mean of the counted components' 0-1 scores (the judge's "
        "mean mapped onto 0-1, and each reference check's); null when no component counts.",
    )
    components: list[ComponentScore] = Field(
        default_factory=list,
        max_length=MAX_PROMPT_REFERENCES + 1,
        description="The judge, then one per reference check.",
    )

    @property
    def judge_mean(self) -> float | None:
        """The judge's mean score, 1-10 (`overall_score` on the wire)."""
        return self.overall_score

    @property
    def weighted_verdict(self) -> float | None:
        """The weighted verdict over every component, 0-1 (`verdict_score` on the wire)."""
        return self.verdict_score


class PromptFailed(PromptEvent):
    """A prompt that failed for good at a stage (or was cancelled), with the reason."""

    entity, verb = "prompt", "failed"
    stage: Stage
    category: FailureCategory
    error: StoredStr = Field(max_length=MAX_ERROR)
    attempts: int = Field(default=1, ge=0, le=SMALLINT_MAX)
    raw_output: StoredStr | None = Field(default=None, max_length=MAX_RAW_OUTPUT)

    @classmethod
    def of(
        cls,
        evt: PromptEvent,
        stage: Stage,
        category: FailureCategory,
        error: str,
        *,
        attempts: int = 1,
        raw_output: str | None = None,
    ) -> "PromptFailed":
        """The failure of the prompt `evt` is about. Error and raw output often quote what a model
        or an endpoint sent: they are made storable and clipped to their bounds, never refused."""
        return cls(
            batch_id=evt.batch_id,
            prompt_id=evt.prompt_id,
            index=evt.index,
            stage=stage,
            category=category,
            error=storable_text(error, MAX_ERROR),
            attempts=attempts,
            raw_output=None if raw_output is None else storable_text(raw_output, MAX_RAW_OUTPUT),
        )

    @classmethod
    def cancelled(cls, evt: PromptEvent, stage: Stage) -> "PromptFailed":
        """What a prompt of a cancelled batch becomes, without a model call."""
        return cls.of(
            evt, stage, FailureCategory.CANCELLED, "the batch was cancelled before this prompt ran", attempts=0
        )


# ---- the call ledger ------------------------------------------------------------------------

CALL_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
MAX_CALL_ATTEMPTS = 100  # BatchConfig.max_retries allows 11
MAX_CALL_PROMPTS = 100  # a batched judge call grades up to judge_batch_size (50) answers


class CallAttempt(Wire):
    """One attempt of a model call: `ok`, or the failure category it ended in."""

    outcome: StoredStr = Field(max_length=40)
    status: int | None = Field(default=None, ge=0, le=999, description="The HTTP status, if the endpoint answered.")
    tokens_in: Count | None = Field(default=None, description="Prompt tokens, when the answer was usable.")
    tokens_out: Count | None = None
    latency_ms: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)
    retry_in_s: float | None = Field(
        default=None, ge=0, le=1e6, allow_inf_nan=False, description="The wait before the next attempt."
    )
    reason: StoredStr = Field(default="", max_length=300)


class CallBilled(Event):
    """One model call as the provider bills it: every attempt, whether or not the event its
    result went into was the one recorded. `call_id` is new for each execution of a handler, so a
    call repeated after a redelivery is a second entry, while a re-publish of the same execution
    (the same id, as Nats-Msg-Id and as the ledger's key) counts once. A batched judge call is one
    entry naming every prompt it graded."""

    entity, verb = "call", "billed"
    call_id: str = Field(pattern=CALL_ID_PATTERN)
    stage: Stage
    prompt_ids: list[Annotated[StoredStr, Field(min_length=1, max_length=MAX_NAME)]] = Field(
        min_length=1, max_length=MAX_CALL_PROMPTS
    )
    endpoint: StoredStr = Field(max_length=500)
    model: StoredStr = Field(max_length=MAX_NAME)
    attempts: list[CallAttempt] = Field(min_length=1, max_length=MAX_CALL_ATTEMPTS)
    tokens_in: Count = 0
    tokens_out: Count = 0
    cost_usd: Usd = 0.0

    @model_validator(mode="before")
    @classmethod
    def _call_id_is_event_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("event_id") and isinstance(data.get("call_id"), str):
            return {**data, "event_id": data["call_id"]}
        return data

    def id_keys(self) -> tuple[object, ...]:
        return (self.batch_id, self.call_id)

    @property
    def outcome(self) -> str:
        """How the call ended: its last attempt's outcome."""
        return self.attempts[-1].outcome


EVENT_TYPES: dict[tuple[str, str], type[Event]] = {
    (cls.entity, cls.verb): cls
    for cls in (
        StartBatchRequested,
        CancelBatchRequested,
        BatchAccepted,
        BatchRejected,
        BatchCompleted,
        PromptQueued,
        PromptResponded,
        PromptJudged,
        PromptScored,
        PromptFailed,
        CallBilled,
    )
}
"""Every event type by its subject's (entity, verb): what a reader of `evalbus.v1.batch.>` parses by."""
