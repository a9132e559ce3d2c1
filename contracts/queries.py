"""Requests and replies of the recorder's query API: one batch's samples, page by page, and the
recent batches. Pure models; the recorder answers them from committed rows.

Subjects: `evalbus.v1.api.batch.samples` (SamplesQuery -> SamplesPage),
`evalbus.v1.api.batch.quality` ({"batch_id"} -> QualityReport) and
`evalbus.v1.api.batches.history` (HistoryQuery -> BatchHistory).
"""

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from contracts.base import Strict, Wire
from contracts.bounds import CRITERION_PATTERN, INT_MAX, MAX_TEXT
from contracts.enums import BatchStatus, FailureCategory, Stage
from contracts.events import CallAttempt
from contracts.ids import BATCH_ID_PATTERN
from contracts.inputs import ChatMessage
from contracts.references import ComponentScore
from contracts.text import StoredStr, storable

MAX_PER_PAGE = 500
MAX_FILTERS = 20
MAX_FILTER_CHARS = 300  # one `field=value` filter
MAX_TOKEN_CHARS = 100  # a resume token
DEFAULT_MAX_CHARS = 2000
MAX_HISTORY = 500
# A metadata key path: dot-separated JSON object keys, e.g. `metadata.source.doc`.
METADATA_KEY_PATTERN = r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,4}$"

SampleStatus = Literal["scored", "failed", "pending"]
SampleSort = Literal[
    "index",
    "-index",
    "score",
    "-score",
    "verdict",
    "-verdict",
    "latency",
    "-latency",
    "tokens",
    "-tokens",
    "cost",
    "-cost",
]
# Filter fields and the values they take (see SampleFilter).
FILTER_FIELDS = ("passed", "status", "stage", "category", "case_id", "model", "criterion.<name>", "metadata.<key>")
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class BatchRef(Wire):
    """A request that names one batch (status, report, quality); other keys are ignored."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)


class ResumeRequest(Wire):
    """Re-drive a running batch's unfinished prompts; `token` makes the re-driven events' ids
    distinct from earlier ones (the same token again re-sends nothing the stream still holds)."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    token: str = Field(default="manual", pattern=r"^[A-Za-z0-9_.:-]+$", min_length=1, max_length=MAX_TOKEN_CHARS)


def _quoted(raw: str) -> str:
    """A user's filter as an error message quotes it: clipped, so a reply stays small."""
    return repr(raw if len(raw) <= 60 else raw[:60] + "...")


class SampleFilter(Wire):
    """One parsed `field=value` filter.

    - `passed=true|false`: the verdict of a scored prompt;
    - `status=scored|failed|pending`: scored, failed for good (no score), or neither yet;
    - `stage=chat|judge|score`, `category=<failure category>`: prompts that failed for good
      at that stage / for that reason (what the report's failures count);
    - `case_id=<id>`, `model=<model that answered>`: exact match;
    - `criterion.<name>=true|false`: the judge's pass on that criterion;
    - `metadata.<key>[.<key>...]=<value>`: the case's metadata value, compared as text
      (`true`, `3`, `2.5` match JSON true, 3, 2.5).
    """

    field: str  # passed, status, stage, category, case_id, model, criterion, metadata
    key: str | None = None  # the criterion name or the metadata key path
    value: str | bool

    @classmethod
    def parse(cls, raw: str) -> "SampleFilter":
        storable(raw)
        name, sep, value = raw.partition("=")
        name = name.strip()
        raw = _quoted(raw)  # from here on only quoted in messages
        if not sep or not name:
            raise ValueError(f"filter {raw} must be field=value; fields: {', '.join(FILTER_FIELDS)}")
        if name in ("passed",) or name.startswith("criterion."):
            flag = _BOOLEANS.get(value.strip().lower())
            if flag is None:
                raise ValueError(f"filter {raw}: {name} takes true or false")
            if name == "passed":
                return cls(field="passed", value=flag)
            criterion = name.removeprefix("criterion.")
            if not re.match(CRITERION_PATTERN, criterion):
                raise ValueError(f"filter {raw}: criterion must match {CRITERION_PATTERN}")
            return cls(field="criterion", key=criterion, value=flag)
        if name == "status":
            if value not in ("scored", "failed", "pending"):
                raise ValueError(f"filter {raw}: status is scored, failed or pending")
            return cls(field="status", value=value)
        if name == "stage":
            if value not in {s.value for s in Stage}:
                raise ValueError(f"filter {raw}: stage is one of {', '.join(s.value for s in Stage)}")
            return cls(field="stage", value=value)
        if name == "category":
            if value not in {c.value for c in FailureCategory}:
                raise ValueError(f"filter {raw}: category is one of {', '.join(c.value for c in FailureCategory)}")
            return cls(field="category", value=value)
        if name in ("case_id", "model"):
            return cls(field=name, value=value)
        if name.startswith("metadata."):
            path = name.removeprefix("metadata.")
            if not re.match(METADATA_KEY_PATTERN, path):
                raise ValueError(f"filter {raw}: metadata key path must match {METADATA_KEY_PATTERN}")
            return cls(field="metadata", key=path, value=value)
        raise ValueError(f"filter {raw}: unknown field {_quoted(name)}; fields: {', '.join(FILTER_FIELDS)}")


class SamplesQuery(Strict):
    """One page of a batch's prompts with everything recorded about them.

    Filters on different fields must all hold; filters repeating a field match any of their
    values (`status=failed`, `status=pending`). `min_score` is on the judge's mean (a sample's
    `overall_score`: the mean of its criteria, 1-10); `min_verdict` on the weighted verdict of
    every component (its `verdict_score`, 0-1). Either excludes prompts without that score. Sorts
    (`score`: the judge's mean, `verdict`: the weighted verdict) put missing values last and break
    ties by index. `page` is 1-based.

    `after_index` walks a whole batch (exports): it returns the prompts after that index, in
    index order (sort `index` only; `page` stays 1), so each page is a cheap index range scan.
    `with_total: false` skips counting the matches.

    Every text field (message contents, expected, answer, reasoning, error, metadata strings) is
    clipped to `max_chars`; `Sample.clipped` names what was clipped and its full length.
    """

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    filters: list[Annotated[str, Field(max_length=MAX_FILTER_CHARS)]] = Field(
        default_factory=list, max_length=MAX_FILTERS
    )
    min_score: float | None = Field(default=None, ge=1, le=10)
    min_verdict: float | None = Field(default=None, ge=0, le=1)
    sort: SampleSort = "index"
    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=50, ge=1, le=MAX_PER_PAGE)
    after_index: int | None = Field(default=None, ge=-1, le=INT_MAX)
    with_total: bool = True
    max_chars: int = Field(default=DEFAULT_MAX_CHARS, ge=50, le=MAX_TEXT)

    @field_validator("filters")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        for raw in value:
            SampleFilter.parse(raw)
        return value

    @model_validator(mode="after")
    def _cursor(self) -> "SamplesQuery":
        if self.after_index is not None and (self.sort != "index" or self.page != 1):
            raise ValueError("after_index walks the batch in index order: use it with sort 'index' and page 1")
        return self

    def parsed_filters(self) -> list[SampleFilter]:
        return [SampleFilter.parse(raw) for raw in self.filters]


class SampleJudgment(Wire):
    criterion: str
    score: int  # 1-10
    passed: bool
    reasoning: str
    confidence: float | None = None


class SampleCall(Wire):
    """One model call about a prompt, from the call ledger: each attempt with its outcome, HTTP
    status, wait before the next and reason. A batched judge call is shared by `prompts` prompts
    (its tokens are the whole call's); a call repeated after a redelivery is a call of its own."""

    stage: str
    call_id: str
    model: str
    outcome: str  # the last attempt's: ok or a failure category
    attempts: list[CallAttempt]
    tokens_in: int
    tokens_out: int
    cost_usd: float
    prompts: int = 1
    occurred_at: datetime


class Sample(Wire):
    """One prompt with everything recorded about it; fields of steps not reached are None."""

    index: int
    prompt_id: str
    case_id: str | None
    status: SampleStatus
    messages: list[ChatMessage]
    expected: str | None
    metadata: dict[str, Any]
    # the model's answer
    answer: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    attempts: int | None = None
    # the judge and the verdict
    judge_model: str | None = None
    judgments: list[SampleJudgment] = Field(default_factory=list)
    overall_score: float | None = Field(
        default=None, description="The judge's mean: the mean of its criterion scores, 1-10 (PromptScored's)."
    )
    verdict_score: float | None = Field(
        default=None, description="The weighted verdict: the weighted mean of the components' scores, 0-1."
    )
    passed: bool | None = None
    reasons: list[str] = Field(default_factory=list)
    components: list[ComponentScore] = Field(default_factory=list)
    # the latest failure recorded for the prompt (also kept when a retry later succeeded)
    failure_stage: str | None = None
    failure_category: str | None = None
    failure_error: str | None = None
    # every model call billed for the prompt, oldest first (repeats after a redelivery included)
    calls: list[SampleCall] = Field(default_factory=list)
    # clipped field -> its full length in characters (e.g. "answer", "messages.0.content")
    clipped: dict[str, int] = Field(default_factory=dict)

    @property
    def judge_mean(self) -> float | None:
        """The judge's mean score, 1-10 (`overall_score` on the wire)."""
        return self.overall_score

    @property
    def weighted_verdict(self) -> float | None:
        """The weighted verdict over every component, 0-1 (`verdict_score` on the wire)."""
        return self.verdict_score


class SamplesPage(Wire):
    """A page of samples. `total` counts every match (None when not asked); `pages` follows.

    A reply stays under the server's max payload: when the page's samples do not all fit,
    `truncated` is true and `items` holds the first ones; `next_after_index` (index order only)
    is where the next request continues, None at the end of the batch.
    """

    batch_id: str
    items: list[Sample]
    page: int
    per_page: int
    total: int | None
    pages: int | None
    truncated: bool = False
    next_after_index: int | None = None


class HistoryQuery(Strict):
    """Recent batches, newest first; every filter given must hold."""

    limit: int = Field(default=20, ge=1, le=MAX_HISTORY)
    session: StoredStr | None = Field(default=None, max_length=200)
    experiment: StoredStr | None = Field(default=None, max_length=200)
    status: BatchStatus | None = None
    model: StoredStr | None = Field(default=None, max_length=200)


class BatchSummary(Wire):
    batch_id: str
    status: BatchStatus
    target: int  # prompts in the batch
    done: int  # scored + failed for good
    scored: int
    failed: int
    passed: int
    pass_rate: float | None  # passed / scored
    model: str | None
    judge_model: str | None
    suite_name: str | None
    session_id: str | None
    experiment: str | None
    created_at: datetime
    finished_at: datetime | None


class BatchHistory(Wire):
    items: list[BatchSummary]
