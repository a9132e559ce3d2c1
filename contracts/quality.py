"""A batch's quality report: what its answers look like as a dataset, and how it rates.

Pure models. The recorder computes the report from committed rows when the batch finishes.
"""

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
_FIELD = re.compile(FIELD_PATTERN)
Rating = Literal["Good", "Needs review", "Poor"]


class QualityConfig(BaseModel):
    """What the quality report measures and when it raises a flag; every threshold is settable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Text fields whose average length is reported. Each is read from the answer when the answer
    # is a JSON object, else from the case's metadata; `answer` falls back to the whole answer.
    text_fields: list[str] = Field(default_factory=lambda: ["answer", "reasoning", "citations"], max_length=20)
    # Minimum average length (characters) per text field; below it the report raises a flag.
    min_chars: dict[str, int] = Field(default_factory=lambda: {"answer": 300, "reasoning": 100, "citations": 50})
    # Metadata fields whose value distribution is reported; None: every scalar metadata field.
    distribution_fields: list[str] | None = Field(default=None, max_length=50)
    # Fields that should vary across the batch: a single value among several samples is flagged.
    diversity_fields: list[str] = Field(default_factory=lambda: ["difficulty", "topic"], max_length=20)
    good_pass_rate: float = Field(default=0.8, ge=0, le=1)  # Good needs at least this pass rate, and no flag
    poor_pass_rate: float = Field(default=0.5, ge=0, le=1)  # below it (or at poor_flags flags) it is Poor
    poor_flags: int = Field(default=3, ge=1)
    max_failure_rate: float = Field(default=0.1, ge=0, le=1)  # a larger share of failed prompts is flagged

    @field_validator("text_fields", "diversity_fields")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _FIELD.match(name):
                raise ValueError(f"field name {name!r} must match {FIELD_PATTERN}")
        return value


class FieldLength(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    present: int  # samples that have the field
    avg_chars: float | None
    min_chars: int | None
    max_chars: int | None
    below_min: int  # samples shorter than the configured minimum


class QualityFlag(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: str  # e.g. short_answer, single_difficulty
    message: str
    value: float | str | None = None
    threshold: float | None = None


class QualityReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_id: str
    samples: int  # prompts with an answer
    scored: int
    failed: int
    pass_rate: float | None
    total_tokens: int  # answer model, in + out
    avg_tokens_per_sample: float | None
    judge_tokens: int
    text_fields: list[FieldLength]
    distributions: dict[str, dict[str, int]]  # field -> value -> samples (top values; others under "(other)")
    judge_averages: dict[str, float]  # criterion -> mean score
    flags: list[QualityFlag]
    rating: Rating
    computed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
