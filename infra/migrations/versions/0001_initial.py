"""Initial schema: batches, prompts, responses, judge calls, judgments, scores, failures, dead letters.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("config", JSONB),
        sa.Column("suite_name", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("judge_model", sa.Text),
        sa.Column("session_id", sa.Text),
        sa.Column("experiment_name", sa.Text),
        sa.Column("total_prompts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completed_prompts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed_prompts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("passed_prompts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens_in", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokens_out", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
        sa.Column("rejected_reason", sa.Text),
        sa.Column("report", JSONB),
        sa.Column("accepted_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        _created(),
    )
    op.create_index("ix_batches_session_id", "batches", ["session_id"])
    op.create_index("ix_batches_experiment_name", "batches", ["experiment_name"])
    op.create_index("ix_batches_status", "batches", ["status"])

    op.create_table(
        "prompts",
        sa.Column("prompt_id", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("case_id", sa.Text),
        sa.Column("messages", JSONB, nullable=False),
        sa.Column("expected", sa.Text),
        sa.Column("metadata", JSONB, nullable=False, server_default="{}"),
        _created(),
    )
    op.create_index("ix_prompts_batch_id", "prompts", ["batch_id", "idx"])

    op.create_table(
        "responses",
        sa.Column("prompt_id", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("answer", sa.Text, nullable=False),
        sa.Column("finish_reason", sa.Text),
        sa.Column("tokens_in", sa.Integer, nullable=False),
        sa.Column("tokens_out", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("attempts", sa.SmallInteger, nullable=False),
        _created(),
    )
    op.create_index("ix_responses_batch_id", "responses", ["batch_id"])

    op.create_table(
        "judge_calls",
        sa.Column("prompt_id", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("judge_model", sa.Text),
        sa.Column("tokens_in", sa.Integer, nullable=False),
        sa.Column("tokens_out", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("cost_usd", sa.Float, nullable=False),
        sa.Column("attempts", sa.SmallInteger, nullable=False),
        _created(),
    )
    op.create_index("ix_judge_calls_batch_id", "judge_calls", ["batch_id"])

    op.create_table(
        "judgments",
        sa.Column("prompt_id", sa.Text, primary_key=True),
        sa.Column("criterion", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("score", sa.SmallInteger, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("judge_model", sa.Text),
        sa.Column("evidence", JSONB, nullable=False),
        _created(),
    )
    op.create_index("ix_judgments_batch_id", "judgments", ["batch_id", "criterion"])

    op.create_table(
        "scores",
        sa.Column("prompt_id", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("overall_score", sa.Float),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("criteria_passed", JSONB, nullable=False),
        sa.Column("reasons", JSONB, nullable=False),
        _created(),
    )
    op.create_index("ix_scores_batch_id", "scores", ["batch_id"])

    op.create_table(
        "failures",
        sa.Column("prompt_id", sa.Text, primary_key=True),
        sa.Column("stage", sa.Text, primary_key=True),
        sa.Column("batch_id", sa.Text, nullable=False),
        sa.Column("category", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.Column("attempts", sa.SmallInteger, nullable=False),
        sa.Column("raw_output", sa.Text),
        _created(),
    )
    op.create_index("ix_failures_batch_id", "failures", ["batch_id"])

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("stream_seq", sa.BigInteger),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        _created(),
    )
    op.create_index("ux_dead_letters_service_seq", "dead_letters", ["service", "stream_seq"], unique=True)


def downgrade() -> None:
    for table in ("dead_letters", "failures", "scores", "judgments", "judge_calls", "responses", "prompts", "batches"):
        op.drop_table(table)
