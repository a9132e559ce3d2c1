"""The database schema (SQLAlchemy Core; migrations in `infra/migrations` create it).

Every table is keyed by natural ids from the events, so a redelivered event is an upsert that
changes nothing, and every count is derived from rows.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()


def _created() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


batches = Table(
    "batches",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("status", Text, nullable=False),
    Column("config", JSONB),
    Column("suite_name", Text),
    Column("model", Text),
    Column("judge_model", Text),
    Column("session_id", Text),
    Column("experiment_name", Text),
    Column("total_prompts", Integer, nullable=False, server_default="0"),
    Column("completed_prompts", Integer, nullable=False, server_default="0"),
    Column("failed_prompts", Integer, nullable=False, server_default="0"),
    Column("passed_prompts", Integer, nullable=False, server_default="0"),
    Column("tokens_in", BigInteger, nullable=False, server_default="0"),
    Column("tokens_out", BigInteger, nullable=False, server_default="0"),
    Column("cost_usd", Float, nullable=False, server_default="0"),
    Column("rejected_reason", Text),
    Column("report", JSONB),
    Column("accepted_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    _created(),
    Index("ix_batches_session_id", "session_id"),
    Index("ix_batches_experiment_name", "experiment_name"),
    Index("ix_batches_status", "status"),
    Index("ix_batches_created_at", "created_at"),
)

prompts = Table(
    "prompts",
    metadata,
    Column("prompt_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("idx", Integer, nullable=False),
    Column("case_id", Text),
    Column("messages", JSONB, nullable=False),
    Column("expected", Text),
    Column("metadata", JSONB, nullable=False, server_default="{}"),
    Column("references", JSONB, nullable=False, server_default="[]"),
    _created(),
    Index("ix_prompts_batch_id", "batch_id", "idx"),
)

responses = Table(
    "responses",
    metadata,
    Column("prompt_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("answer", Text, nullable=False),
    Column("finish_reason", Text),
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("attempts", SmallInteger, nullable=False),
    _created(),
    Index("ix_responses_batch_id", "batch_id"),
)

judge_calls = Table(
    "judge_calls",
    metadata,
    Column("prompt_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("judge_model", Text),
    Column("tokens_in", Integer, nullable=False),
    Column("tokens_out", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("attempts", SmallInteger, nullable=False),
    Column("call_share", Float, nullable=False, server_default="1"),
    Column("unbatched_calls", SmallInteger, nullable=False, server_default="1"),
    Column("batch_size", SmallInteger, nullable=False, server_default="1"),
    Column("fallback", Boolean, nullable=False, server_default="false"),
    _created(),
    Index("ix_judge_calls_batch_id", "batch_id"),
)

judgments = Table(
    "judgments",
    metadata,
    Column("prompt_id", Text, primary_key=True),
    Column("criterion", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("score", SmallInteger, nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("judge_model", Text),
    Column("evidence", JSONB, nullable=False),
    _created(),
    Index("ix_judgments_batch_id", "batch_id", "criterion"),
)

scores = Table(
    "scores",
    metadata,
    Column("prompt_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("overall_score", Float),
    Column("passed", Boolean, nullable=False),
    Column("criteria_passed", JSONB, nullable=False),
    Column("reasons", JSONB, nullable=False),
    Column("verdict_score", Float),
    Column("components", JSONB, nullable=False, server_default="[]"),
    _created(),
    Index("ix_scores_batch_id", "batch_id"),
)

failures = Table(
    "failures",
    metadata,
    Column("prompt_id", Text, primary_key=True),
    Column("stage", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", SmallInteger, nullable=False),
    Column("raw_output", Text),
    _created(),
    Index("ix_failures_batch_id", "batch_id"),
)

# The call ledger: one row per model call (every attempt), keyed by the call id a handler run
# drew, so a call repeated after a redelivery is a row of its own; a batched judge call is one
# row naming every prompt it graded.
model_calls = Table(
    "model_calls",
    metadata,
    Column("call_id", Text, primary_key=True),
    Column("batch_id", Text, nullable=False),
    Column("stage", Text, nullable=False),
    Column("prompt_ids", ARRAY(Text), nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("attempt_count", SmallInteger, nullable=False),
    Column("attempts", JSONB, nullable=False),
    Column("tokens_in", BigInteger, nullable=False),
    Column("tokens_out", BigInteger, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    _created(),
    Index("ix_model_calls_batch_id", "batch_id", "stage"),
    Index("ix_model_calls_prompt_ids", "prompt_ids", postgresql_using="gin"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("service", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("stream_seq", BigInteger),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
    _created(),
    Index("ux_dead_letters_service_seq", "service", "stream_seq", unique=True),
)

breaker_events = Table(
    "breaker_events",
    metadata,
    Column("stream_seq", BigInteger, primary_key=True),
    Column("service", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("old_state", Text, nullable=False),
    Column("new_state", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    # The endpoint as services.recorder.endpoints.endpoint_key spells it, matched to a batch's.
    Column("endpoint_key", Text),
    Index("ix_breaker_events_endpoint_time", "endpoint", "occurred_at"),
    Index("ix_breaker_events_key_time", "endpoint_key", "occurred_at"),
    Index("ix_breaker_events_key_latest", "endpoint_key", "service", "stream_seq"),
)

# The model endpoints a batch's calls use (the model's and the judge's), recorded when it is
# accepted: a batch's progress and report show the breakers of these endpoints only.
batch_endpoints = Table(
    "batch_endpoints",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("endpoint_key", Text, primary_key=True),
)

quality_reports = Table(
    "quality_reports",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("rating", Text, nullable=False),
    Column("report", JSONB, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
