"""Reference checks and components of every verdict, judge batching metrics, quality reports.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prompts", sa.Column("references", JSONB, nullable=False, server_default="[]"))
    op.add_column("judge_calls", sa.Column("call_share", sa.Float, nullable=False, server_default="1"))
    op.add_column("judge_calls", sa.Column("unbatched_calls", sa.SmallInteger, nullable=False, server_default="1"))
    op.add_column("judge_calls", sa.Column("batch_size", sa.SmallInteger, nullable=False, server_default="1"))
    op.add_column("judge_calls", sa.Column("fallback", sa.Boolean, nullable=False, server_default="false"))
    op.add_column("scores", sa.Column("verdict_score", sa.Float))
    op.add_column("scores", sa.Column("components", JSONB, nullable=False, server_default="[]"))
    op.create_table(
        "quality_reports",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("rating", sa.Text, nullable=False),
        sa.Column("report", JSONB, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_batches_created_at", "batches", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_batches_created_at", "batches")
    op.drop_table("quality_reports")
    op.drop_column("scores", "components")
    op.drop_column("scores", "verdict_score")
    for name in ("fallback", "batch_size", "unbatched_calls", "call_share"):
        op.drop_column("judge_calls", name)
    op.drop_column("prompts", "references")
