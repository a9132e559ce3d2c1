"""A batch's quality report: what its answers look like as a dataset, and how it rates.

Pure models. The recorder computes the report from committed rows when the batch finishes.
"""

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Annotated, Literal, TypeVar

from pydantic import Field, field_validator

from contracts.base import Strict, Wire
from contracts.text import StoredStr

FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"
_FIELD = re.compile(FIELD_PATTERN)
Rating = Literal["Good", "Needs review", "Poor"]
Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Text = Annotated[StoredStr, Field(max_length=1000)]
# Distribution keys and flag values are metadata values, which are bounded by the metadata's size.
Label = Annotated[StoredStr, Field(max_length=100_000)]
_Names = TypeVar("_Names", list[str], dict[str, int], None)


class QualityConfig(Strict):
    """What the quality report measures and when it raises a flag; every threshold is settable."""

    # Text fields whose average length is reported. Each is read from the answer when the answer
    # is a JSON object, else from the case's metadata; `answer` falls back to the whole answer.
    text_fields: list[str] = Field(default_factory=lambda: ["answer", "reasoning", "citations"], max_length=20)
    # Minimum average length (characters) per text field; below it the report raises a flag.
    min_chars: dict[str, Annotated[int, Field(ge=0, le=10_000_000)]] = Field(
        default_factory=lambda: {"answer": 300, "reasoning": 100, "citations": 50}, max_length=20
    )
    # Metadata fields whose value distribution is reported; None: every scalar metadata field.
    distribution_fields: list[str] | None = Field(default=None, max_length=50)
    # Fields that should vary across the batch: a single value among several samples is flagged.
    diversity_fields: list[str] = Field(default_factory=lambda: ["difficulty", "topic"], max_length=20)
    good_pass_rate: float = Field(default=0.8, ge=0, le=1)  # Good needs at least this pass rate, and no flag
    poor_pass_rate: float = Field(default=0.5, ge=0, le=1)  # below it (or at poor_flags flags) it is Poor
    poor_flags: int = Field(default=3, ge=1, le=1000)
    max_failure_rate: float = Field(default=0.1, ge=0, le=1)  # a larger share of failed prompts is flagged

    @field_validator("text_fields", "diversity_fields", "distribution_fields", "min_chars")
    @classmethod
    def _names(cls, value: _Names) -> _Names:
        names: Iterable[str] = value or ()  # a list of names, or a dict keyed by them
        for name in names:
            if not _FIELD.fullmatch(name):
                raise ValueError(f"field name {name!r} must match {FIELD_PATTERN}")
        return value


class FieldLength(Wire):
    field: Text
    present: Count  # samples that have the field
    avg_chars: Finite | None
    min_chars: Count | None
    max_chars: Count | None
    below_min: Count  # samples shorter than the configured minimum


class QualityFlag(Wire):
    code: Text  # e.g. short_answer, single_difficulty
    message: Annotated[StoredStr, Field(max_length=200_000)]
    value: Finite | Label | None = None
    threshold: Finite | None = None


class QualityReport(Wire):
    batch_id: Text
    samples: Count  # prompts with an answer
    scored: Count
    failed: Count
    pass_rate: Finite | None
    total_tokens: Count  # answer model, in + out
    avg_tokens_per_sample: Finite | None
    judge_tokens: Count
    text_fields: list[FieldLength]
    # field -> value -> samples (top values; others under "(other)")
    distributions: dict[Label, dict[Label, Count]]
    judge_averages: dict[Text, Finite]  # criterion -> mean score
    flags: list[QualityFlag]
    rating: Rating
    computed_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
