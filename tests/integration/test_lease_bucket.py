"""The leases bucket outlives a nats-server restart: with no bucket every model call would wait for
good (a single server forgets a memory stream itself when it restarts)."""

from pathlib import Path

import nats
import pytest

from contracts.topology import KV_LEASES
from infra.embedded import NatsServer
from infra.nats_topology import apply_topology, lease_bucket_config

pytestmark = pytest.mark.integration


async def test_the_lease_bucket_is_still_there_after_the_broker_restarts(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:
        await apply_topology(server.url)
        server.stop()
        server = NatsServer(tmp_path / "nats").start()
        nc = await nats.connect(server.url)
        try:
            kv = await nc.jetstream().key_value(KV_LEASES)
            await kv.create("ep.x.0", b"holder")  # a claim works at once, as before the restart
        finally:
            await nc.close()
    finally:
        server.stop()


async def test_a_lease_bucket_made_in_memory_by_an_earlier_version_is_made_again_on_file(tmp_path: Path) -> None:
    from nats.js.api import StorageType

    server = NatsServer(tmp_path / "nats").start()
    try:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            old = lease_bucket_config()
            old.storage = StorageType.MEMORY
            await js.add_stream(old)
            await apply_topology(server.url)
            assert (await js.stream_info(f"KV_{KV_LEASES}")).config.storage == StorageType.FILE
        finally:
            await nc.close()
    finally:
        server.stop()
