"""The migrations build exactly the schema the recorder's table definitions describe."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from services.recorder.tables import metadata

pytestmark = pytest.mark.integration


async def test_no_drift_between_migrations_and_tables(servers) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    try:
        async with engine.connect() as conn:
            diff = await conn.run_sync(lambda sync: compare_metadata(MigrationContext.configure(sync), metadata))
    finally:
        await engine.dispose()
    assert diff == []
