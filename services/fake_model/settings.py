"""Settings of the fake model server: `EVALBUS_FAKE_MODEL_*` environment variables, each also a CLI flag."""

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class FakeModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALBUS_FAKE_MODEL_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="interface to listen on")
    port: int = Field(default=8089, ge=0, le=65535, description="TCP port; 0 picks a free one")
    latency_ms: float = Field(
        default=0.0, ge=0, description="time from a request to its response (the answer is written within it)"
    )
    jitter_ms: float = Field(default=0.0, ge=0, description="extra delay in [0, jitter], fixed per request body")
    error_rate_500: float = Field(default=0.0, ge=0, le=1, description="share of requests answered with HTTP 500")
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1, description="share of requests answered with HTTP 429")
    retry_after_s: float = Field(default=1.0, ge=0, description="Retry-After of the 429 answers, in seconds")
    hang_rate: float = Field(
        default=0.0, ge=0, le=1, description="share of requests that sleep hang_s before answering"
    )
    hang_s: float = Field(default=600.0, ge=0, description="how long a hanging request sleeps")
    malformed_rate: float = Field(default=0.0, ge=0, le=1, description="share of judge requests answered with bad JSON")
    malformed_batch_marker: str | None = Field(
        default=None,
        description="batched judge requests with an answer containing this text get a malformed reply "
        "(the single-answer fallback does not), so tests can break one chunk and not the others",
    )
    adversarial: bool = Field(default=False, description="append prompt-injection probes to some chat answers")
    seed: int = Field(default=0, description="seed of the fault draws")
    request_log: Path | None = Field(default=None, description="append one JSON line per request to this file")
    api_key: str | None = Field(default=None, description="if set, requests without `Bearer <api_key>` get 401")

    @model_validator(mode="after")
    def _rates_fit(self) -> "FakeModelSettings":
        # The fault draw maps one uniform number onto consecutive ranges, so they must fit in [0, 1).
        total = self.error_rate_500 + self.rate_limit_rate + self.hang_rate + self.malformed_rate
        if total > 1 + 1e-9:
            raise ValueError(f"fault rates add up to {total:g}, more than 1")
        return self
