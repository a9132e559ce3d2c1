"""Replicas on a single server: apply_topology reads the server's INFO, finds no cluster, and
makes every stream and bucket with one replica (a cluster's three are the cluster test's:
tests/chaos/test_cluster.py)."""

import pytest
from nats.aio.client import Client

from contracts.topology import KV_CANCELS, KV_RATES, KV_STARTS, OBJ_SUITES, STREAMS
from infra.nats_topology import apply_topology, cluster_size

pytestmark = pytest.mark.integration

BUCKET_STREAMS = [f"KV_{b}" for b in (KV_STARTS, KV_CANCELS, KV_RATES)] + [f"OBJ_{OBJ_SUITES}"]


async def test_a_single_server_gets_one_replica_of_everything(servers, nc: Client) -> None:  # type: ignore[no-untyped-def]
    assert cluster_size(nc._server_info) == 1
    assert await apply_topology(servers.nats_url) == []  # applied again: harmless
    js = nc.jetstream()
    for name in [s.name for s in STREAMS] + BUCKET_STREAMS:
        info = await js.stream_info(name)
        assert info.config.num_replicas == 1, name
        assert info.cluster is None or not info.cluster.replicas, name
