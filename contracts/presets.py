"""Named sets of a batch's safety settings: every limit of the batch-scoring document, for model
calls, judge calls, SQL checks and breakers. `evalbus run --preset NAME` starts from one; each
explicit flag then overrides its setting (`merged`).

`default` is batch-scoring practice for slow hosted APIs (3 calls in flight, 2 retries starting at
5 s, a 120 s timeout) and leaves the rest to what already governs it: the judge follows the
model's concurrency and timeout, SQL checks keep their own timeouts, and breakers and SQL
concurrency are the services' settings (threshold 5, reset 30 s, 4 checks per database). So a
batch run with no flags carries exactly the config it did before these settings existed.
`conservative` and `aggressive` spell out every setting.
"""

from typing import Any, Literal

from pydantic import Field

from contracts.base import Wire

PresetName = Literal["conservative", "default", "aggressive"]


class Limits(Wire):
    """One preset: BatchConfig's safety fields, by their BatchConfig names. None: as BatchConfig's
    None (the setting it follows, or the service's)."""

    concurrency: int
    judge_concurrency: int | None = None
    max_retries: int
    retry_base_s: float
    timeout_s: float
    judge_timeout_s: float | None = None
    sql_timeout_s: float | None = None
    sql_concurrency: int | None = None
    breaker_fail_max: int | None = None
    breaker_reset_s: float | None = None
    judge_batch_size: int = Field(default=10)


PRESETS: dict[str, Limits] = {
    "conservative": Limits(
        concurrency=1,
        judge_concurrency=1,
        max_retries=3,
        retry_base_s=10.0,
        timeout_s=180.0,
        judge_timeout_s=180.0,
        sql_timeout_s=30.0,
        sql_concurrency=1,
        breaker_fail_max=3,
        breaker_reset_s=60.0,
        judge_batch_size=5,
    ),
    "default": Limits(concurrency=3, max_retries=2, retry_base_s=5.0, timeout_s=120.0, judge_batch_size=10),
    "aggressive": Limits(
        concurrency=32,
        judge_concurrency=32,
        max_retries=2,
        retry_base_s=1.0,
        timeout_s=60.0,
        judge_timeout_s=60.0,
        sql_timeout_s=5.0,
        sql_concurrency=16,
        breaker_fail_max=10,
        breaker_reset_s=10.0,
        judge_batch_size=20,
    ),
}


def merged(preset: str, **explicit: float | None) -> dict[str, Any]:
    """The preset's settings with every explicitly given (not None) one in its place, as
    BatchConfig keyword arguments (ints and floats, validated by BatchConfig); settings that stay
    None are left out (BatchConfig's default)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    unknown = set(explicit) - set(Limits.model_fields)
    if unknown:
        raise ValueError(f"not a preset setting: {', '.join(sorted(unknown))}")
    values = PRESETS[preset].model_dump() | {k: v for k, v in explicit.items() if v is not None}
    return {k: v for k, v in values.items() if v is not None}
