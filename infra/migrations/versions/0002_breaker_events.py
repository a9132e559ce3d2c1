"""Circuit-breaker state changes of model endpoints, for progress and reports.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "breaker_events",
        sa.Column("stream_seq", sa.BigInteger, primary_key=True),
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("old_state", sa.Text, nullable=False),
        sa.Column("new_state", sa.Text, nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_breaker_events_endpoint_time", "breaker_events", ["endpoint", "occurred_at"])


def downgrade() -> None:
    op.drop_table("breaker_events")
