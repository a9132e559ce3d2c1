"""What a user gives to run a batch: its config, its suite of cases, and the commands that start
and cancel it (`start.requested`, `cancel.requested`, sent by the CLI).

These are read like every wire model (unknown fields ignored), not refused like `base.Strict`
input: a start written by a newer CLI still runs on an older generator.
"""

import re
from typing import Literal, Self

from pydantic import Field, field_validator, model_validator

from contracts.base import Compact, Event, Wire
from contracts.bounds import CRITERION_PATTERN, MAX_CRITERIA, MAX_MESSAGES, MAX_NAME, MAX_TEXT, Metadata
from contracts.enums import DEFAULT_CRITERIA
from contracts.quality import QualityConfig
from contracts.references import MAX_REFERENCES, Reference
from contracts.text import StoredStr
from contracts.topology import SUITE_OBJECT_PATTERN
from contracts.urls import BaseUrl, EndpointName

_CRITERION = re.compile(CRITERION_PATTERN)
JudgeMode = Literal["combined", "per_criterion"]


class ChatMessage(Wire):
    role: Literal["system", "user", "assistant"]
    content: StoredStr = Field(max_length=MAX_TEXT)


class Case(Wire):
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


class BatchConfig(Compact):
    """What a user sets for a batch; carried by every prompt event that needs it (without the
    fields at their defaults)."""

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
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        max_length=MAX_CRITERIA,
        description="Per criterion, the judge's 1-10 score a criterion needs to pass.",
    )
    default_threshold: float = Field(
        default=7.0, ge=1, le=10, description="The judge's 1-10 score a criterion without a threshold needs."
    )
    # Checks applied to every case of the suite, after the case's own `references`.
    references: list[Reference] = Field(default_factory=list, max_length=MAX_REFERENCES)
    judge_weight: float = Field(
        default=1.0,
        ge=0,
        le=1000,
        description="Weight of the judge's component in the weighted verdict (0: report it, do not count it).",
    )
    pass_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="null: a case passes when every counted component passes. A number in [0, 1]: when "
        "its weighted verdict (PromptScored.verdict_score) reaches it and no SQL check is a hard failure.",
    )
    # Answers graded in one judge call (1 turns batching off); "combined" grades every criterion
    # in that call, "per_criterion" makes one call per criterion.
    judge_batch_size: int = Field(default=10, ge=1, le=50)
    judge_mode: JudgeMode = "combined"
    quality: QualityConfig = Field(default_factory=QualityConfig)
    session_id: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    experiment: StoredStr | None = Field(default=None, max_length=MAX_NAME)
    # Safety settings of this batch (contracts/presets.py names three sets of them). None: the
    # setting named in its description.
    concurrency: int = Field(default=3, ge=1, le=1024, description="model calls in flight for this batch")
    judge_concurrency: int | None = Field(
        default=None, ge=1, le=1024, description="judge calls in flight for this batch; null: `concurrency`"
    )
    timeout_s: float = Field(default=120.0, gt=0, le=3600, description="seconds per model call attempt")
    judge_timeout_s: float | None = Field(
        default=None, gt=0, le=3600, description="seconds per judge call attempt; null: `timeout_s`"
    )
    max_retries: int = Field(default=2, ge=0, le=10, description="retries per model and judge call")
    retry_base_s: float | None = Field(
        default=None, ge=0, le=600, description="first retry delay (doubling, full jitter); null: the service's"
    )
    breaker_fail_max: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="consecutive endpoint failures that open the breaker of this batch's calls; null: the "
        "service's (EVALBUS_BREAKER_FAIL_MAX)",
    )
    breaker_reset_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="pause of an open breaker before a probe; null: the service's (EVALBUS_BREAKER_RESET_S)",
    )
    sql_timeout_s: float | None = Field(
        default=None, gt=0, le=300, description="seconds per SQL check query, for every check; null: each check's own"
    )
    sql_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="SQL checks of this batch running at once per database, within the scorer's "
        "EVALBUS_SQL_CHECK_CONCURRENCY; null: the scorer's",
    )
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

    @property
    def effective_judge_concurrency(self) -> int:
        return self.judge_concurrency or self.concurrency

    @property
    def effective_judge_timeout_s(self) -> float:
        return self.judge_timeout_s or self.timeout_s


class SuiteRef(Wire):
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


class StartBatchRequested(Event):
    """Run a batch: its config and where its cases are."""

    entity, verb = "start", "requested"
    config: BatchConfig
    suite: SuiteRef


class CancelBatchRequested(Event):
    """Stop a running batch: its pending prompts fail as cancelled."""

    entity, verb = "cancel", "requested"
    reason: StoredStr = Field(default="cancelled by user", max_length=2000)
