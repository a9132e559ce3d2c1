"""Operations events, outside any batch: dead letters (`evalbus.v1.dlq.<service>`) and model
endpoints' breaker changes (`evalbus.v1.breaker.<endpoint>`). The recorder stores both."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from contracts.base import Wire
from contracts.bounds import BIGINT_MAX, MAX_ERROR, MAX_NAME, Timestamp, utcnow
from contracts.text import StoredStr, storable_text

BreakerState = Literal["closed", "open", "half_open"]


def _kept(limit: int) -> AfterValidator:
    return AfterValidator(lambda value: storable_text(value, limit))


class DeadLetter(Wire):
    """A message a service could not use, kept with the reason, on `evalbus.v1.dlq.<service>`.

    Its text is made storable (NUL and lone surrogates become U+FFFD) and clipped rather than
    refused: a dead letter is where unusable input goes, so building one must not fail on it."""

    service: Annotated[str, _kept(200)]
    subject: Annotated[str, _kept(1000)]
    reason: Annotated[str, _kept(MAX_ERROR)]
    payload: Annotated[str, _kept(65_536)]
    stream_seq: int | None = Field(default=None, ge=0, le=BIGINT_MAX)
    occurred_at: datetime = Field(default_factory=utcnow)


class BreakerStateChanged(Wire):
    """A model endpoint's circuit breaker changed state, on `evalbus.v1.breaker.<endpoint>`."""

    service: StoredStr = Field(max_length=MAX_NAME)
    endpoint: StoredStr = Field(max_length=1000)
    old_state: BreakerState
    new_state: BreakerState
    occurred_at: Timestamp = Field(default_factory=utcnow)
