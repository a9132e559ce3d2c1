"""What the recorder reports about a batch, from committed rows: progress snapshots (on
`evalbus.v1.progress.<batch_id>`), the final report a `batch.completed` carries, and the answer
to a resume request. The query API's other replies are in `contracts.queries`.

Scores come on two scales: the judge's (1-10, `mean_score` of the report and of a criterion) and
a component's (0-1, `mean_score` of a component, where the judge is one component among others).
"""

from datetime import datetime
from typing import Annotated

from pydantic import Field

from contracts.base import Wire
from contracts.bounds import BIGINT_MAX, MAX_NAME, Count, Finite, utcnow
from contracts.enums import BatchStatus
from contracts.ids import BATCH_ID_PATTERN
from contracts.text import StoredStr


class BatchProgress(Wire):
    """A snapshot of committed state, on `evalbus.v1.progress.<batch_id>`."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    status: BatchStatus
    total: Count
    responded: Count
    judged: Count
    scored: Count
    failed: Count
    cancelled: bool = False
    breakers_open: list[Annotated[StoredStr, Field(max_length=500)]] = Field(
        default_factory=list,
        max_length=100,
        description="Model endpoints the batch uses whose breaker is not closed right now.",
    )
    elapsed_s: Finite
    occurred_at: datetime = Field(default_factory=utcnow)

    @property
    def done(self) -> int:
        return self.scored + self.failed


class CriterionSummary(Wire):
    criterion: StoredStr = Field(max_length=MAX_NAME)
    mean_score: Finite | None = Field(description="The judge's mean score on this criterion, 1-10.")
    pass_rate: Finite | None
    judged: Count

    @property
    def judge_mean(self) -> float | None:
        """The judge's mean score on this criterion, 1-10 (`mean_score` on the wire)."""
        return self.mean_score


class ComponentSummary(Wire):
    """One reference check (or the judge) over a batch."""

    name: StoredStr = Field(max_length=MAX_NAME)
    kind: StoredStr = Field(max_length=MAX_NAME)
    evaluated: Count
    passed: Count
    mean_score: Finite | None = Field(
        description="The mean of this component's 0-1 scores (the judge's mapped from 1-10 onto 0-1)."
    )
    verdicts: dict[Annotated[StoredStr, Field(max_length=MAX_NAME)], Count] = Field(
        default_factory=dict,
        description="By verdict (equal/different/invalid_sql/timeout/...), for checks that give one.",
    )


class BatchReport(Wire):
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
    pass_rate: Finite | None = Field(description="Passed verdicts over scored prompts.")
    mean_score: Finite | None = Field(
        description="The judge's mean over the scored prompts: the mean of their overall_score, 1-10; "
        "null when no prompt was judged."
    )
    criteria: list[CriterionSummary]
    failures_by_category: dict[Annotated[StoredStr, Field(max_length=MAX_NAME)], Count]
    latency_p50_ms: Finite | None
    latency_p95_ms: Finite | None
    # Sums over a batch: PostgreSQL bigint.
    tokens_in: int = Field(ge=0, le=BIGINT_MAX)
    tokens_out: int = Field(ge=0, le=BIGINT_MAX)
    judge_tokens_in: int = Field(ge=0, le=BIGINT_MAX)
    judge_tokens_out: int = Field(ge=0, le=BIGINT_MAX)
    cost_usd: Finite
    breaker_openings: Count = Field(
        default=0, description="Times the breaker of a model endpoint the batch uses opened while it ran."
    )
    judge_calls: Finite = Field(default=0.0, description="Model calls the judge made.")
    judge_calls_saved: Finite = Field(
        default=0.0, description="Calls that grading one answer at a time would have added."
    )
    judge_fallbacks: Count = Field(
        default=0, description="Answers graded alone because their batched call was unusable."
    )
    components: list[ComponentSummary] = Field(default_factory=list)
    # Billed, from the call ledger: every model call attempt that reached an endpoint, the
    # calls repeated after a redelivery included; the figures above are the useful ones (those of
    # the recorded results). 0 for batches run before the ledger existed.
    billed_tokens_in: int = Field(default=0, ge=0, le=BIGINT_MAX, description="Prompt tokens billed for the model.")
    billed_tokens_out: int = Field(default=0, ge=0, le=BIGINT_MAX)
    billed_judge_tokens_in: int = Field(
        default=0, ge=0, le=BIGINT_MAX, description="Prompt tokens billed for the judge."
    )
    billed_judge_tokens_out: int = Field(default=0, ge=0, le=BIGINT_MAX)
    billed_cost_usd: Finite = Field(default=0.0, description="Estimated cost of every billed call.")
    billed_calls: Count = Field(default=0, description="Model and judge calls in the ledger.")
    billed_attempts: Count = Field(default=0, description="Their attempts (a retried call has several).")
    wall_time_s: Finite | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def judge_mean(self) -> float | None:
        """The judge's mean over the scored prompts, 1-10 (`mean_score` on the wire)."""
        return self.mean_score


class ResumeResult(Wire):
    """The answer to a resume request: how many prompts were sent on again, by event."""

    batch_id: str = Field(pattern=BATCH_ID_PATTERN)
    redriven: Count
    by_event: dict[Annotated[StoredStr, Field(max_length=MAX_NAME)], Count]
