"""Event models: one per step of a prompt's life and of a batch's life.

Events are frozen pydantic models, JSON on the wire. Readers ignore unknown fields so that
additive changes inside `v1` need no coordinated deploy.

Every event is untrusted input and most of it reaches PostgreSQL: every string is a StoredStr
(no NUL, no lone surrogate), every free-form dict a bounded JsonObject, and every field has a
bound — strings and lists a length, integers the range of the column they land in, floats a
finite range — so a bad event is refused on arrival with a reason, not by the database later.
"""

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Final, Literal, Self

import orjson
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts import subjects
from contracts.enums import DEFAULT_CRITERIA, BatchStatus, FailureCategory, Stage
from contracts.ids import BATCH_ID_PATTERN, event_id
from contracts.quality import QualityConfig, QualityReport
from contracts.references import MAX_DETAIL, MAX_REFERENCES, ComponentScore, Reference
from contracts.text import JsonObject, StoredStr, storable_text
from contracts.topology import SUITE_OBJECT_PATTERN
from contracts.urls import BaseUrl, EndpointName

SCHEMA_VERSION = 1
CRITERION_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
_CRITERION = re.compile(CRITERION_PATTERN)
MAX_TEXT = 200_000
MAX_ANSWER = 1_000_000  # a model's answer: max_tokens goes up to 131k tokens
MAX_NAME = 200  # model names, session and experiment tags, ids
MAX_ERROR = 4000
MAX_RAW_OUTPUT = 8000
# A prompt's checks: its case's, its suite's shared ones, then its batch's.
MAX_PROMPT_REFERENCES = 3 * MAX_REFERENCES
MAX_MESSAGES = 200
MAX_CRITERIA = 20
# Case metadata: keys at the top level, and bytes as JSON.
MAX_METADATA_KEYS = 100
MAX_METADATA_SIZE = 100_000
# PostgreSQL column ranges: `integer` (indexes, token counts), `smallint` (attempts, batch sizes).
INT_MAX: Final = 2**31 - 1
SMALLINT_MAX: Final = 2**15 - 1
MAX_USD = 1e15
EVENT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{0,100}$"
JudgeMode = Literal["combined", "per_criterion"]


def _bounded_metadata(value: dict[str, Any]) -> dict[str, Any]:
    # Measured as the recorder will store it (orjson, as its JSONB serializer): C speed, one pass.
    try:
        size = len(orjson.dumps(value)) if value else 0
    except TypeError as exc:  # (JsonObject has refused what orjson cannot write; kept a ValueError anyway)
        raise ValueError(f"metadata cannot be stored as JSON: {exc}") from None
    if size > MAX_METADATA_SIZE:
        raise ValueError(f"metadata larger than {MAX_METADATA_SIZE} bytes as JSON")
    return value


def _sane_time(value: datetime) -> datetime:
    # Stored as timestamptz; far years with an offset would overflow converting to UTC.
    if not 1970 <= value.year <= 9000:
        raise ValueError("a time between the years 1970 and 9000 is expected")
    return value


Timestamp = Annotated[AwareDatetime, AfterValidator(_sane_time)]
"""A time with its zone (a naive one would be read in whatever zone the reader runs in)."""
Metadata = Annotated[JsonObject, Field(max_length=MAX_METADATA_KEYS), AfterValidator(_bounded_metadata)]
"""A case's free-form metadata: storable, at most 32 levels, 100 keys, 100 kB as JSON."""
Name = Annotated[StoredStr, Field(min_length=1, max_length=MAX_NAME)]
Count = Annotated[int, Field(ge=0, le=INT_MAX)]
Usd = Annotated[float, Field(ge=0, le=MAX_USD, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ChatMessage(Model):
    role: Literal["system", "user", "assistant"]
    content: StoredStr = Field(max_length=MAX_TEXT)


class Case(Model):
    """One test case of a suite: a prompt or a chat, with optional reference and metadata."""

    id: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    prompt: StoredStr | None = Field(default=None, min_length=1, max_length=MAX_TEXT)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    expected: StoredStr | None = Field(default=None, max_length=MAX_TEXT)
    references: list[Reference] = Field(default_factory=list, max_length=MAX_REFERENCES)
    metadata: Metadata = Field(default_factory=dict)

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

    model: StoredStr = Field(min_length=1, max_length=MAX_NAME)
    # Where the model is called: an endpoint the operator configured, by name or by its URL (the
    # services refuse any other, or call it without a key where the operator allows open URLs).
    endpoint: EndpointName | None = None
    base_url: BaseUrl | None = None
    judge_model: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    # Neither judge field set: the judge uses the model's endpoint or URL if one is named, else
    # the operator's `judge` endpoint.
    judge_endpoint: EndpointName | None = None
    judge_base_url: BaseUrl | None = None
    judge_enabled: bool = True
    criteria: list[str] = Field(default_factory=lambda: list(DEFAULT_CRITERIA), min_length=1, max_length=MAX_CRITERIA)
    thresholds: dict[str, float] = Field(default_factory=dict, max_length=MAX_CRITERIA)
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
    session_id: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    experiment: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    concurrency: int = Field(default=3, ge=1, le=1024)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    max_retries: int = Field(default=2, ge=0, le=10)
    retry_base_s: float | None = Field(default=None, ge=0, le=600)  # None: the service's setting
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)
    system_prompt: StoredStr | None = Field(default=None, max_length=MAX_TEXT)
    input_cost_per_mtok: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    output_cost_per_mtok: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)

    @field_validator("criteria")
    @classmethod
    def _criteria(cls, value: list[str]) -> list[str]:
        for c in value:
            if not _CRITERION.fullmatch(c):
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

    name: StoredStr | None = Field(default=None, max_length=200)
    cases: list[Case] | None = Field(default=None, max_length=20_000)
    path: StoredStr | None = Field(default=None, max_length=4096)
    builtin: StoredStr | None = Field(default=None, max_length=100)
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

    event_id: str = Field(default="", pattern=EVENT_ID_PATTERN)
    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    occurred_at: Timestamp = Field(default_factory=utcnow)
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
    reason: StoredStr = Field(default="cancelled by user", max_length=2000)


class BatchAccepted(Event):
    entity, verb = "batch", "accepted"
    config: BatchConfig
    suite_name: StoredStr = Field(max_length=MAX_NAME)
    total_prompts: int = Field(ge=1, le=INT_MAX)


class BatchRejected(Event):
    entity, verb = "batch", "rejected"
    reason: StoredStr = Field(max_length=MAX_ERROR)
    errors: list[Annotated[StoredStr, Field(max_length=MAX_ERROR)]] = Field(default_factory=list, max_length=50)
    # True: this answers a start of a batch id that an earlier start had already used (ids are
    # single-use). It says nothing about that batch, whose recorded state must not change.
    repeated_start: bool = False


class BatchProgress(Model):
    """A snapshot of committed state, on `evalbus.v1.progress.<batch_id>`."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    status: BatchStatus
    total: Count
    responded: Count
    judged: Count
    scored: Count
    failed: Count
    cancelled: bool = False
    # Model endpoints not closed right now.
    breakers_open: list[Annotated[StoredStr, Field(max_length=500)]] = Field(default_factory=list, max_length=100)
    elapsed_s: Finite
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def done(self) -> int:
        return self.scored + self.failed


class CriterionSummary(Model):
    criterion: StoredStr = Field(max_length=MAX_NAME)
    mean_score: Finite | None
    pass_rate: Finite | None
    judged: Count


class ComponentSummary(Model):
    """One reference check (or the judge) over a batch."""

    name: StoredStr = Field(max_length=MAX_NAME)
    kind: StoredStr = Field(max_length=MAX_NAME)
    evaluated: Count
    passed: Count
    mean_score: Finite | None
    # By verdict (equal/different/invalid_sql/timeout/...), for checks that give one.
    verdicts: dict[Annotated[StoredStr, Field(max_length=MAX_NAME)], Count] = Field(default_factory=dict)


class BatchReport(Model):
    """The final (or current) figures of a batch, computed from committed rows."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    status: BatchStatus
    model: StoredStr = Field(max_length=MAX_NAME)
    judge_model: StoredStr = Field(max_length=MAX_NAME)
    session_id: StoredStr | None = Field(max_length=MAX_NAME)
    experiment: StoredStr | None = Field(max_length=MAX_NAME)
    suite_name: StoredStr = Field(max_length=MAX_NAME)
    total: Count
    completed: Count
    failed: Count
    passed: Count
    pass_rate: Finite | None
    mean_score: Finite | None
    criteria: list[CriterionSummary]
    failures_by_category: dict[Annotated[StoredStr, Field(max_length=MAX_NAME)], Count]
    latency_p50_ms: Finite | None
    latency_p95_ms: Finite | None
    # Sums over a batch: PostgreSQL bigint.
    tokens_in: int = Field(ge=0, le=2**63 - 1)
    tokens_out: int = Field(ge=0, le=2**63 - 1)
    judge_tokens_in: int = Field(ge=0, le=2**63 - 1)
    judge_tokens_out: int = Field(ge=0, le=2**63 - 1)
    cost_usd: Finite
    breaker_openings: Count = 0  # times a model endpoint's breaker opened while the batch ran
    judge_calls: Finite = 0.0  # model calls the judge made
    judge_calls_saved: Finite = 0.0  # calls that grading one answer at a time would have added
    judge_fallbacks: Count = 0  # answers graded alone because their batched call was unusable
    components: list[ComponentSummary] = Field(default_factory=list)
    wall_time_s: Finite | None
    created_at: datetime
    finished_at: datetime | None


class BatchCompleted(Event):
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
    entity, verb = "prompt", "queued"
    case_id: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    # A case's messages and the batch's system prompt put before them.
    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES + 1)
    expected: StoredStr | None = Field(default=None, max_length=MAX_TEXT)
    references: list[Reference] = Field(default_factory=list, max_length=MAX_PROMPT_REFERENCES)
    metadata: Metadata = Field(default_factory=dict)
    config: BatchConfig


class Usage(Model):
    tokens_in: Count = 0
    tokens_out: Count = 0
    latency_ms: float = Field(default=0.0, ge=0, le=1e9, allow_inf_nan=False)
    attempts: int = Field(default=1, ge=1, le=SMALLINT_MAX)
    cost_usd: Usd = 0.0


class PromptResponded(PromptEvent):
    entity, verb = "prompt", "responded"
    messages: list[ChatMessage] = Field(max_length=MAX_MESSAGES + 1)
    answer: StoredStr = Field(max_length=MAX_ANSWER)
    finish_reason: StoredStr | None = Field(default=None, max_length=100)
    model: StoredStr = Field(max_length=MAX_NAME)
    usage: Usage
    expected: StoredStr | None = Field(default=None, max_length=MAX_TEXT)
    references: list[Reference] = Field(default_factory=list, max_length=MAX_PROMPT_REFERENCES)
    config: BatchConfig


class CriterionJudgment(Model):
    criterion: str = Field(pattern=CRITERION_PATTERN)
    score: int = Field(ge=1, le=10)
    passed: bool
    reasoning: StoredStr = Field(max_length=20_000)
    confidence: float = Field(ge=0, le=1, allow_inf_nan=False)
    suggestions: list[Annotated[StoredStr, Field(max_length=5000)]] = Field(default_factory=list, max_length=20)


class JudgeCalls(Model):
    """How one answer's judgment was obtained, for the batch's judge metrics."""

    # This answer's share of the model calls made (a call grading K answers counts 1/K to each,
    # a failed batched call included), and the calls it would have needed one answer at a time.
    share: float = Field(default=1.0, ge=0, le=1000, allow_inf_nan=False)
    unbatched: int = Field(default=1, ge=0, le=SMALLINT_MAX)
    batch_size: int = Field(default=1, ge=1, le=SMALLINT_MAX)  # answers in the call that produced the judgment
    fallback: bool = False  # graded alone after its batched call came back unusable


class PromptJudged(PromptEvent):
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
    entity, verb = "prompt", "scored"
    # The judge's mean score, 1-10 (None when not judged).
    overall_score: float | None = Field(ge=1, le=10, allow_inf_nan=False)
    passed: bool
    criteria_passed: dict[Annotated[str, Field(pattern=CRITERION_PATTERN)], bool] = Field(max_length=MAX_CRITERIA)
    reasons: list[Annotated[StoredStr, Field(max_length=2 * MAX_DETAIL)]] = Field(default_factory=list, max_length=100)
    verdict_score: float | None = Field(default=None, ge=0, le=1)  # weighted mean of the components
    # The judge, then one per reference check.
    components: list[ComponentScore] = Field(default_factory=list, max_length=MAX_PROMPT_REFERENCES + 1)


class PromptFailed(PromptEvent):
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


def _kept(limit: int) -> AfterValidator:
    return AfterValidator(lambda value: storable_text(value, limit))


class DeadLetter(Model):
    """A message a service could not use, kept with the reason, on `evalbus.v1.dlq.<service>`.

    Its text is made storable (NUL and lone surrogates become U+FFFD) and clipped rather than
    refused: a dead letter is where unusable input goes, so building one must not fail on it."""

    service: Annotated[str, _kept(200)]
    subject: Annotated[str, _kept(1000)]
    reason: Annotated[str, _kept(MAX_ERROR)]
    payload: Annotated[str, _kept(65_536)]
    stream_seq: int | None = Field(default=None, ge=0, le=2**63 - 1)
    occurred_at: datetime = Field(default_factory=utcnow)


class ResumeResult(Model):
    """The answer to a resume request: how many prompts were sent on again, by event."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    redriven: Count
    by_event: dict[Annotated[StoredStr, Field(max_length=MAX_NAME)], Count]


class BreakerStateChanged(Model):
    """A model endpoint's circuit breaker changed state, on `evalbus.v1.breaker.<endpoint>`."""

    service: StoredStr = Field(max_length=MAX_NAME)
    endpoint: StoredStr = Field(max_length=1000)
    old_state: Literal["closed", "open", "half_open"]
    new_state: Literal["closed", "open", "half_open"]
    occurred_at: Timestamp = Field(default_factory=utcnow)


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
