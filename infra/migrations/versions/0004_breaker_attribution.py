"""Breakers attributed to batches: the endpoints a batch's calls use, and breaker events keyed the
same way (an endpoint's URL normalised: scheme, host, port, path).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from services.recorder.endpoints import endpoint_key

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_endpoints",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("endpoint_key", sa.Text, primary_key=True),
    )
    op.add_column("breaker_events", sa.Column("endpoint_key", sa.Text))
    # Few distinct endpoints, however many events: keyed here rather than in SQL, by the one function.
    conn = op.get_bind()
    for (endpoint,) in conn.execute(sa.text("SELECT DISTINCT endpoint FROM breaker_events")).all():
        conn.execute(
            sa.text("UPDATE breaker_events SET endpoint_key = :k WHERE endpoint = :e"),
            {"k": endpoint_key(endpoint), "e": endpoint},
        )
    op.create_index("ix_breaker_events_key_time", "breaker_events", ["endpoint_key", "occurred_at"])
    op.create_index("ix_breaker_events_key_latest", "breaker_events", ["endpoint_key", "service", "stream_seq"])


def downgrade() -> None:
    op.drop_index("ix_breaker_events_key_latest", "breaker_events")
    op.drop_index("ix_breaker_events_key_time", "breaker_events")
    op.drop_column("breaker_events", "endpoint_key")
    op.drop_table("batch_endpoints")
