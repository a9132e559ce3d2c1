"""Settings for every evalbus process, read from `EVALBUS_*` environment variables.

Every setting has a default that works for the embedded stack (`evalbus up`), which exports
the URLs of the servers it started to the processes it starts.
"""

import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.urls import BaseUrl, EndpointName

log = logging.getLogger("evalbus.settings")

# Environment variables renamed, still read for one release: old name -> new name.
DEPRECATED_ENV = {
    "EVALBUS_FETCH_BATCH": "EVALBUS_CONSUMER_BATCH_SIZE",
    "EVALBUS_FETCH_TIMEOUT_S": "EVALBUS_CONSUMER_BATCH_WAIT_S",
}


class EndpointSetting(BaseModel):
    """One model endpoint an operator configured: its URL and where its key comes from (if any)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: BaseUrl
    api_key: SecretStr | None = Field(default=None, description="the key itself (never logged)")
    api_key_file: Path | None = Field(default=None, description="a file holding the key (e.g. a mounted secret)")
    api_key_env: str | None = Field(default=None, description="an environment variable holding the key")

    @model_validator(mode="after")
    def _one_key_source(self) -> "EndpointSetting":
        if sum(x is not None for x in (self.api_key, self.api_key_file, self.api_key_env)) > 1:
            raise ValueError("give at most one of api_key, api_key_file, api_key_env")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALBUS_", extra="ignore", validate_by_name=True)

    nats_url: str | None = Field(default=None, description="NATS server(s); unset = embedded")
    nats_user: str | None = Field(default=None, description="NATS user (infra/nats/nats-server.conf roles)")
    nats_password: SecretStr | None = Field(default=None, description="NATS password (never logged)")
    database_url: str | None = Field(default=None, description="postgresql+asyncpg URL; unset = embedded")
    data_dir: Path = Field(default=Path(".evalbus"), description="where the embedded stack keeps its data")
    log_level: str = "INFO"

    model_base_url: BaseUrl = Field(
        default="http://127.0.0.1:8089/v1",
        description="URL of the endpoint named `default` (unless EVALBUS_ENDPOINTS names it): batches that name "
        "no endpoint use it",
    )
    judge_base_url: BaseUrl | None = Field(
        default=None,
        description="URL of the endpoint named `judge` (unless EVALBUS_ENDPOINTS names it), which the judge uses "
        "when a batch names none; unset = the `default` endpoint",
    )
    api_key: SecretStr | None = Field(
        default=None, description="bearer token of the `default` and `judge` endpoints only (never logged)"
    )
    api_key_file: Path | None = Field(
        default=None, description="file holding the key of the `default` and `judge` endpoints (if no api_key)"
    )
    endpoints: dict[EndpointName, EndpointSetting] = Field(
        default_factory=dict,
        description='model endpoints batches may use, JSON: {"<name>": {"url": "https://api.openai.com/v1", '
        '"api_key_file": "/run/secrets/openai"}} (or "api_key", or "api_key_env": a variable holding it); '
        "a key is sent to its own endpoint's URL only",
    )
    allow_unlisted_endpoints: bool = Field(
        default=False,
        description="let batches name any other http(s) URL, called without any key (for trusted networks only)",
    )

    endpoint_concurrency: int = Field(
        default=64, ge=1, description="in-flight model calls per endpoint URL, across every replica of every service"
    )
    worker_slots: int = Field(default=128, ge=1, description="messages a model-calling service works on at once")
    retry_base_s: float = Field(default=5.0, ge=0, description="first retry delay (full jitter, doubling)")
    retry_max_s: float = Field(default=60.0, ge=0, description="longest single retry delay")

    rate_limits: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per-endpoint budgets shared by all replicas, JSON: "
        '{"<base url or endpoint name>": {"rpm": 500, "tpm": 200000}}',
    )
    breaker_fail_max: int = Field(default=5, ge=1, description="consecutive endpoint failures that open its breaker")
    breaker_reset_s: float = Field(default=30.0, gt=0, description="pause before an open breaker lets a probe through")

    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="port of the service's Prometheus /metrics endpoint; 0 = no metrics (`evalbus up` gives "
        "each process its own port from this one: see evalbus/stack.py)",
    )
    metrics_host: str = Field(default="127.0.0.1", description="address the metrics endpoint listens on")
    tracing: Literal["off", "otlp", "console"] = Field(
        default="off",
        description="OpenTelemetry tracing (needs the `tracing` extra): spans exported over OTLP "
        "(OTEL_EXPORTER_OTLP_* variables) or printed; the trace context travels in NATS headers",
    )
    judge_linger_ms: float = Field(
        default=20.0, ge=0, le=60_000, description="how long the judge waits for more answers to grade in one call"
    )
    # An alias turns the env prefix off for its field, so both names are spelled out in full.
    consumer_batch_size: int = Field(
        default=256,
        ge=1,
        validation_alias=AliasChoices("EVALBUS_CONSUMER_BATCH_SIZE", "EVALBUS_FETCH_BATCH"),
        description="most messages a batched consumer hands its handler at once "
        "(EVALBUS_FETCH_BATCH, its old name, is read until the next release)",
    )
    consumer_batch_wait_s: float = Field(
        default=0.05,
        gt=0,
        validation_alias=AliasChoices("EVALBUS_CONSUMER_BATCH_WAIT_S", "EVALBUS_FETCH_TIMEOUT_S"),
        description="how long a batched consumer waits for more messages after the first "
        "(EVALBUS_FETCH_TIMEOUT_S, its old name, is read until the next release)",
    )
    stall_after_s: float = Field(
        default=900.0,
        gt=0,
        description="resume a running batch (its unfinished prompts sent on again, rebuilt from the database) "
        "after this long without progress",
    )
    heartbeat_dir: Path = Field(
        default=Path("/tmp"), description="where a healthy service touches evalbus-<service>.alive"
    )
    progress_interval_s: float = Field(default=0.25, gt=0, description="minimum gap between progress snapshots")
    reference_databases: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='databases SQL checks run on, JSON: {"<name a suite uses>": "postgresql://reader:...@host/db"}; '
        "give a read-only role",
    )
    sql_check_concurrency: int = Field(default=4, ge=1, description="SQL checks running at once per database")
    suite_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="directories the generator may read suites by path from (separated by ':', or a JSON list); "
        "none by default: the CLI sends small suites inline and uploads large ones to the object store",
    )
    suite_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="largest uploaded suite the generator downloads"
    )
    pattern_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="time the scorer gives the user patterns (regex checks, schema `pattern`s) of one answer "
        "together; a check still matching then gets the verdict `timeout`",
    )

    @field_validator("suite_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(os.pathsep) if part.strip()]
        return value

    @model_validator(mode="after")
    def _warn_of_old_names(self) -> "Settings":
        # The aliases read both names alike; only the environment tells which one was set.
        present = {key.upper() for key in os.environ}
        for old, new in DEPRECATED_ENV.items():
            if old in present:
                both = f" ({new} is set too and wins)" if new in present else ""
                log.warning("%s is deprecated and read until the next release only: set %s instead%s", old, new, both)
        return self

    def resolved_api_key(self) -> SecretStr | None:
        """The key of the implicit `default` and `judge` endpoints; a missing key file means none."""
        if self.api_key:
            return self.api_key
        if self.api_key_file and self.api_key_file.exists():
            key = self.api_key_file.read_text().strip()
            return SecretStr(key) if key else None
        return None

    def require_nats_url(self) -> str:
        if not self.nats_url:
            raise RuntimeError("EVALBUS_NATS_URL is not set: start the stack with `evalbus up` or set it")
        return self.nats_url

    def nats_credentials(self) -> tuple[str | None, str | None]:
        password = self.nats_password.get_secret_value() if self.nats_password else None
        return self.nats_user, password

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError("EVALBUS_DATABASE_URL is not set: start the stack with `evalbus up` or set it")
        return self.database_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
