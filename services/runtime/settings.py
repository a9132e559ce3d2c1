"""Settings for every evalbus process, read from `EVALBUS_*` environment variables.

Every setting has a default that works for the embedded stack (`evalbus up`), which exports
the URLs of the servers it started to the processes it starts.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALBUS_", extra="ignore")

    nats_url: str | None = Field(default=None, description="NATS server(s); unset = embedded")
    nats_user: str | None = Field(default=None, description="NATS user (infra/nats/nats-server.conf roles)")
    nats_password: SecretStr | None = Field(default=None, description="NATS password (never logged)")
    database_url: str | None = Field(default=None, description="postgresql+asyncpg URL; unset = embedded")
    data_dir: Path = Field(default=Path(".evalbus"), description="where the embedded stack keeps its data")
    log_level: str = "INFO"

    model_base_url: str = Field(
        default="http://127.0.0.1:8089/v1", description="OpenAI-compatible base URL when a batch names none"
    )
    judge_base_url: str | None = Field(default=None, description="judge base URL when a batch names none")
    api_key: str | None = Field(default=None, description="bearer token for the model API (never logged)")
    api_key_file: Path | None = Field(default=None, description="file holding the model API key")

    endpoint_concurrency: int = Field(default=64, ge=1, description="in-flight model calls per endpoint and process")
    worker_slots: int = Field(default=128, ge=1, description="messages a model-calling service works on at once")
    retry_base_s: float = Field(default=5.0, ge=0, description="first retry delay (full jitter, doubling)")
    retry_max_s: float = Field(default=60.0, ge=0, description="longest single retry delay")

    rate_limits: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description='per-endpoint budgets shared by all replicas, JSON: {"<base url>": {"rpm": 500, "tpm": 200000}}',
    )
    breaker_fail_max: int = Field(default=5, ge=1, description="consecutive endpoint failures that open its breaker")
    breaker_reset_s: float = Field(default=30.0, gt=0, description="pause before an open breaker lets a probe through")

    judge_linger_ms: float = Field(
        default=20.0, ge=0, le=60_000, description="how long the judge waits for more answers to grade in one call"
    )
    fetch_batch: int = Field(default=256, ge=1, description="messages per pull for batched consumers")
    fetch_timeout_s: float = Field(
        default=0.05, gt=0, description="how long a partial batch waits for more messages after its first"
    )
    stall_after_s: float = Field(
        default=900.0, gt=0, description="re-drive a running batch from the database after this long without progress"
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
    pattern_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="time the scorer gives the user patterns (regex checks, schema `pattern`s) of one answer "
        "together; a check still matching then gets the verdict `timeout`",
    )

    def resolved_api_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_file and self.api_key_file.exists():
            return self.api_key_file.read_text().strip() or None
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
