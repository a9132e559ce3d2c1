"""Fixtures the integration tests share: a client of the session's NATS server."""

from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client


@pytest.fixture
async def nc(servers) -> AsyncIterator[Client]:  # type: ignore[no-untyped-def]
    client = await nats.connect(servers.nats_url)
    yield client
    await client.drain()
