"""Alembic environment: runs on the connection `infra.migrate` hands over (async engine)."""

from alembic import context

from services.recorder.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
