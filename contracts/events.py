"""Event models: one per step of a prompt's life and of a batch's life.

Events are frozen pydantic models, JSON on the wire. Readers ignore unknown fields so that
additive changes inside `v1` need no coordinated deploy.
"""

import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import subjects
from contracts.enums import DEFAULT_CRITERIA, BatchStatus, FailureCategory, Stage
from contracts.ids import BATCH_ID_PATTERN, event_id
from contracts.quality import QualityConfig, QualityReport
from contracts.references import ComponentScore, Reference
from contracts.topology import SUITE_OBJECT_PATTERN
from contracts.urls import BaseUrl, EndpointName

SCHEMA_VERSION = 1
CRITERION_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
_CRITERION = re.compile(CRITERION_PATTERN)
MAX_TEXT = 200_000
MAX_REFERENCES = 20
JudgeMode = Literal["combined", "per_criterion"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ChatMessage(Model):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)


class Case(Model):
    """One test case of a suite: a prompt or a chat, with optional reference and metadata."""

    id: str | None = Field(default=None, max_length=200)
    prompt: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=200)
    expected: str | None = Field(default=None, max_length=MAX_TEXT)
    references: list[Reference] = Field(default_factory=list, max_length=MAX_REFERENCES)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_input(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a case needs exactly one of 'prompt' or 'messages'")
        if self.messages is not None and not any(m.role == "user" for m in self.messages):
            raise ValueError("'messages' needs at least one user message")
        return self

    def chat(self, system_prompt: str | None) -> list[ChatMessage]:
        """The messages sent to the model, with the batch's system prompt first if given."""
        msgs = list(self.messages) if self.messages else [ChatMessage(role="user", content=self.prompt or "")]
        if system_prompt and not any(m.role == "system" for m in msgs):
            msgs.insert(0, ChatMessage(role="system", content=system_prompt))
        return msgs


class BatchConfig(Model):
    """What a user sets for a batch; carried by every prompt event that needs it."""

    model: str = Field(min_length=1, max_length=200)
    # Where the model is called: an endpoint the operator configured, by name or by its URL (the
    # services refuse any other, or call it without a key where the operator allows open URLs).
    endpoint: EndpointName | None = None
    base_url: BaseUrl | None = None
    judge_model: str | None = Field(default=None, max_length=200)
    # Neither judge field set: the judge uses the model's endpoint or URL if one is named, else
    # the operator's `judge` endpoint.
    judge_endpoint: EndpointName | None = None
    judge_base_url: BaseUrl | None = None
    judge_enabled: bool = True
    criteria: list[str] = Field(default_factory=lambda: list(DEFAULT_CRITERIA), min_length=1, max_length=20)
    thresholds: dict[str, float] = Field(default_factory=dict)
    default_threshold: float = Field(default=7.0, ge=1, le=10)
    # Checks applied to every case of the suite, after the case's own `references`.
    references: list[Reference] = Field(default_factory=list, max_length=MAX_REFERENCES)
    # Weight of the judge's verdict among the reference checks (0: report it, do not count it).
    judge_weight: float = Field(default=1.0, ge=0, le=1000)
    # None: a case passes when every counted component passes. A number in [0, 1]: when the
    # weighted mean of the component scores reaches it and no SQL check is a hard failure.
    pass_threshold: float | None = Field(default=None, ge=0, le=1)
    # Answers graded in one judge call (1 turns batching off); "combined" grades every criterion
    # in that call, "per_criterion" makes one call per criterion.
    judge_batch_size: int = Field(default=10, ge=1, le=50)
    judge_mode: JudgeMode = "combined"
    quality: QualityConfig = Field(default_factory=QualityConfig)
    session_id: str | None = Field(default=None, max_length=200)
    experiment: str | None = Field(default=None, max_length=200)
    concurrency: int = Field(default=3, ge=1, le=1024)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_base_s: float | None = Field(default=None, ge=0, le=600)  # None: the service's setting
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)
    system_prompt: str | None = Field(default=None, max_length=MAX_TEXT)
    input_cost_per_mtok: float | None = Field(default=None, ge=0)
    output_cost_per_mtok: float | None = Field(default=None, ge=0)

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, value: list[str]) -> list[str]:
        for c in value:
            if not _CRITERION.match(c):
                raise ValueError(f"criterion {c!r} must match {CRITERION_PATTERN}")
        if len(set(value)) != len(value):
            raise ValueError("criteria must be unique")
        return value

    @model_validator(mode="after")
    def _thresholds(self) -> Self:
        for name, value in self.thresholds.items():
            if name not in self.criteria:
                raise ValueError(f"threshold for unknown criterion {name!r}")
            if not 1 <= value <= 10:
                raise ValueError(f"threshold for {name!r} must be between 1 and 10")
        return self

    def threshold(self, criterion: str) -> float:
        return self.thresholds.get(criterion, self.default_threshold)

    @property
    def effective_judge_model(self) -> str:
        return self.judge_model or self.model

    def defaulted_fields(self) -> set[str]:
        """The fields still at their defaults, which events leave out on the wire."""
        return {name for name, default in _CONFIG_DEFAULTS.items() if getattr(self, name) == default}


_CONFIG_DEFAULTS = {
    name: field.get_default(call_default_factory=True)
    for name, field in BatchConfig.model_fields.items()
    if not field.is_required()
}


class SuiteRef(Model):
    """Where the generator finds the cases: inline, a bundled suite, a file in one of the
    generator's configured suite directories, or an uploaded object (`topology.OBJ_SUITES`,
    named by `topology.suite_object_name`)."""

    name: str | None = Field(default=None, max_length=200)
    cases: list[Case] | None = Field(default=None, max_length=20_000)
    path: str | None = Field(default=None, max_length=4096)
    builtin: str | None = Field(default=None, max_length=100)
    object: str | None = Field(default=None, max_length=200, pattern=SUITE_OBJECT_PATTERN)

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        given = [x for x in (self.cases, self.path, self.builtin, self.object) if x is not None]
        if len(given) != 1:
            raise ValueError("a suite needs exactly one of 'cases', 'path', 'builtin' or 'object'")
        return self

    @property
    def display_name(self) -> str:
        if self.object is not None:
            return self.name or "uploaded"
        return self.name or self.builtin or (self.path or "inline").rsplit("/", 1)[-1]


class Event(Model):
    """Common envelope. Subclasses name their subject's entity and verb."""

    entity: ClassVar[str]
    verb: ClassVar[str]

    event_id: str = ""
    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    occurred_at: datetime = Field(default_factory=utcnow)
    schema_version: int = SCHEMA_VERSION

    def id_keys(self) -> tuple[object, ...]:
        return (self.batch_id,)

    @model_validator(mode="after")
    def _default_event_id(self) -> Self:
        if not self.event_id:
            object.__setattr__(self, "event_id", event_id(f"{self.entity}.{self.verb}", *self.id_keys()))
        return self

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"unsupported schema_version {value}; this build reads {SCHEMA_VERSION}")
        return value

    @property
    def subject(self) -> str:
        return subjects.batch_event(self.batch_id, self.entity, self.verb)

    def to_json(self) -> bytes:
        """The wire form. A carried config leaves out its fields at their defaults (typically
        ~0.7 of a queued prompt's 1.3 kB, parsed again by every reader); readers fill them in."""
        config = getattr(self, "config", None)
        if isinstance(config, BatchConfig):
            return self.model_dump_json(exclude={"config": config.defaulted_fields()}).encode()
        return self.model_dump_json().encode()


# ---- batch lifecycle -------------------------------------------------------------------------


class StartBatchRequested(Event):
    entity, verb = "start", "requested"
    config: BatchConfig
    suite: SuiteRef


class CancelBatchRequested(Event):
    entity, verb = "cancel", "requested"
    reason: str = Field(default="cancelled by user", max_length=2000)


class BatchAccepted(Event):
    entity, verb = "batch", "accepted"
    config: BatchConfig
    suite_name: str
    total_prompts: int = Field(ge=1)


class BatchRejected(Event):
    entity, verb = "batch", "rejected"
    reason: str
    errors: list[str] = Field(default_factory=list)
    # True: this answers a start of a batch id that an earlier start had already used (ids are
    # single-use). It says nothing about that batch, whose recorded state must not change.
    repeated_start: bool = False


class BatchProgress(Model):
    """A snapshot of committed state, on `evalbus.v1.progress.<batch_id>`."""

    batch_id: str
    status: BatchStatus
    total: int
    responded: int
    judged: int
    scored: int
    failed: int
    cancelled: bool = False
    breakers_open: list[str] = Field(default_factory=list)  # model endpoints not closed right now
    elapsed_s: float
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def done(self) -> int:
        return self.scored + self.failed


class CriterionSummary(Model):
    criterion: str
    mean_score: float | None
    pass_rate: float | None
    judged: int


class ComponentSummary(Model):
    """One reference check (or the judge) over a batch."""

    name: str
    kind: str
    evaluated: int
    passed: int
    mean_score: float | None
    verdicts: dict[str, int] = Field(default_factory=dict)  # SQL checks: equal/different/invalid_sql/...


class BatchReport(Model):
    """The final (or current) figures of a batch, computed from committed rows."""

    batch_id: str
    status: BatchStatus
    model: str
    judge_model: str
    session_id: str | None
    experiment: str | None
    suite_name: str
    total: int
    completed: int
    failed: int
    passed: int
    pass_rate: float | None
    mean_score: float | None
    criteria: list[CriterionSummary]
    failures_by_category: dict[str, int]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    tokens_in: int
    tokens_out: int
    judge_tokens_in: int
    judge_tokens_out: int
    cost_usd: float
    breaker_openings: int = 0  # times a model endpoint's breaker opened while the batch ran
    judge_calls: float = 0.0  # model calls the judge made
    judge_calls_saved: float = 0.0  # calls that grading one answer at a time would have added
    judge_fallbacks: int = 0  # answers graded alone because their batched call was unusable
    components: list[ComponentSummary] = Field(default_factory=list)
    wall_time_s: float | None
    created_at: datetime
    finished_at: datetime | None


class BatchCompleted(Event):
    entity, verb = "batch", "completed"
    status: BatchStatus
    report: BatchReport
    quality: QualityReport | None = None


# ---- one prompt's stream of events ----------------------------------------------------------


class PromptEvent(Event):
    prompt_id: str = Field(min_length=1, max_length=200)
    index: int = Field(ge=0)

    def id_keys(self) -> tuple[object, ...]:
        return (self.batch_id, self.prompt_id)


class PromptQueued(PromptEvent):
    entity, verb = "prompt", "queued"
    case_id: str | None = None
    messages: list[ChatMessage]
    expected: str | None = None
    references: list[Reference] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    config: BatchConfig


class Usage(Model):
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    latency_ms: float = Field(default=0.0, ge=0)
    attempts: int = Field(default=1, ge=1)
    cost_usd: float = Field(default=0.0, ge=0)


class PromptResponded(PromptEvent):
    entity, verb = "prompt", "responded"
    messages: list[ChatMessage]
    answer: str
    finish_reason: str | None = None
    model: str
    usage: Usage
    expected: str | None = None
    references: list[Reference] = Field(default_factory=list)
    config: BatchConfig


class CriterionJudgment(Model):
    criterion: str
    score: int = Field(ge=1, le=10)
    passed: bool
    reasoning: str
    confidence: float = Field(ge=0, le=1)
    suggestions: list[str] = Field(default_factory=list)


class JudgeCalls(Model):
    """How one answer's judgment was obtained, for the batch's judge metrics."""

    # This answer's share of the model calls made (a call grading K answers counts 1/K to each,
    # a failed batched call included), and the calls it would have needed one answer at a time.
    share: float = Field(default=1.0, ge=0)
    unbatched: int = Field(default=1, ge=0)
    batch_size: int = Field(default=1, ge=1)  # answers in the call that produced the judgment
    fallback: bool = False  # graded alone after its batched call came back unusable


class PromptJudged(PromptEvent):
    entity, verb = "prompt", "judged"
    judge_model: str | None
    judgments: list[CriterionJudgment]
    usage: Usage
    answer: str
    expected: str | None = None
    references: list[Reference] = Field(default_factory=list)
    calls: JudgeCalls = Field(default_factory=JudgeCalls)
    config: BatchConfig


class PromptScored(PromptEvent):
    entity, verb = "prompt", "scored"
    overall_score: float | None  # the judge's mean score, 1-10 (None when not judged)
    passed: bool
    criteria_passed: dict[str, bool]
    reasons: list[str] = Field(default_factory=list)
    verdict_score: float | None = Field(default=None, ge=0, le=1)  # weighted mean of the components
    components: list[ComponentScore] = Field(default_factory=list)


class PromptFailed(PromptEvent):
    entity, verb = "prompt", "failed"
    stage: Stage
    category: FailureCategory
    error: str = Field(max_length=4000)
    attempts: int = Field(default=1, ge=0)
    raw_output: str | None = Field(default=None, max_length=8000)


class DeadLetter(Model):
    """A message a service could not use, kept with the reason, on `evalbus.v1.dlq.<service>`."""

    service: str
    subject: str
    reason: str
    payload: str
    stream_seq: int | None = None
    occurred_at: datetime = Field(default_factory=utcnow)


class ResumeResult(Model):
    """The answer to a resume request: how many prompts were sent on again, by event."""

    batch_id: str
    redriven: int
    by_event: dict[str, int]


class BreakerStateChanged(Model):
    """A model endpoint's circuit breaker changed state, on `evalbus.v1.breaker.<endpoint>`."""

    service: str
    endpoint: str
    old_state: Literal["closed", "open", "half_open"]
    new_state: Literal["closed", "open", "half_open"]
    occurred_at: datetime = Field(default_factory=utcnow)


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
    )
}
