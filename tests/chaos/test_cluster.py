"""Chaos on a three-node JetStream cluster: the stream leader is killed (-9) mid-batch and later
restarted; the batch still ends with every prompt terminal, none lost, none twice.

The nodes run the deployment's cluster config (infra/nats/nats-cluster.conf: the locked-down
users and permissions plus routes) on loopback; every service and the client are given all three
URLs and log in as their own roles, as in compose's `cluster` profile.

It takes a minute or two on a loaded machine, so `make test` skips it; `make chaos` runs it
(EVALBUS_CHAOS_CLUSTER=1).
"""

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from contracts import subjects
from contracts.topology import KV_CANCELS, KV_RATES, KV_STARTS, OBJ_SUITES, STREAMS
from evalbus.client import connect
from evalbus.stack import Stack
from infra.embedded import PostgresServer
from infra.migrate import migrate
from infra.nats_cluster import NatsCluster
from infra.nats_topology import apply_topology
from tests.chaos.test_chaos import accounted, query, start_batch, wait_terminal, write_suite

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(os.environ.get("EVALBUS_CHAOS_CLUSTER") != "1", reason="a minute or more: `make chaos` runs it"),
]

PROMPTS = int(os.environ.get("EVALBUS_CHAOS_CLUSTER_PROMPTS", "300"))
ACK_WAIT_S = 4.0
LEADER_DOWN_S = 5.0  # a new leader is elected within ~2 s; the batch must go on on two nodes


async def provisioner(cluster: NatsCluster) -> nats.NATS:
    return await nats.connect(
        cluster.url.split(","),
        user="provisioner",
        password=cluster.passwords["provisioner"],
        inbox_prefix="_INBOX.provisioner",
        max_reconnect_attempts=-1,
    )


async def stream_leader(nc: nats.NATS, stream: str, timeout_s: float = 30) -> str:
    """The node that leads `stream` now (waits out an election)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            info = await nc.jetstream(timeout=2).stream_info(stream)
            if info.cluster and info.cluster.leader:
                return info.cluster.leader
        except (nats.errors.Error, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"no leader for {stream} after {timeout_s}s"
        await asyncio.sleep(0.2)


async def rows_written(db: str, batch_id: str) -> int:
    rows = await query(
        db,
        "SELECT (SELECT count(*) FROM responses WHERE batch_id = :b) + (SELECT count(*) FROM scores WHERE batch_id = :b)"
        " + (SELECT count(*) FROM failures WHERE batch_id = :b)",
        b=batch_id,
    )
    return int(str(rows[0][0]))


async def wait_rows(db: str, batch_id: str, at_least: int, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while (n := await rows_written(db, batch_id)) < at_least:
        assert time.monotonic() < deadline, f"batch {batch_id}: {n} rows after {timeout_s}s, waited for {at_least}"
        await asyncio.sleep(0.2)
    return n


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Its own temporary folder, not pytest's tmp_path: pytest sessions of the same user prune each
    other's old base folders (all but the last three), which can pull a running test's away."""
    path = Path(tempfile.mkdtemp(prefix="evalbus-cluster-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_stream_leader_killed_mid_batch_loses_and_doubles_nothing(workdir: Path) -> None:
    tmp_path = workdir
    cluster = NatsCluster(tmp_path / "cluster").start()
    stack = Stack(tmp_path / "stack")
    try:
        await cluster_run(cluster, stack, tmp_path)
    finally:
        stack.stop()
        cluster.stop()
        for p in [*(stack.data_dir / "logs").glob("*.log"), *cluster.data_dir.glob("*/nats-server.log")]:
            text = p.read_text(errors="replace")
            if "Traceback" in text or "[FTL]" in text:
                print(f"--- {p}\n{text[-2500:]}")


async def cluster_run(cluster: NatsCluster, stack: Stack, tmp_path: Path) -> None:
    stack.postgres = PostgresServer(tmp_path / "postgres").start()
    await cluster.wait_ready()
    # Every service and the client get the three URLs and their own logins, as in compose.
    stack.nats_url, stack.database_url = cluster.url, stack.postgres.url
    stack.service_logins = dict(cluster.passwords)
    stack.client_credentials = ("client", cluster.passwords["client"])
    pw = cluster.passwords["provisioner"]
    warnings = await apply_topology(cluster.url, user="provisioner", password=pw, ack_wait_s=ACK_WAIT_S)
    assert warnings == []
    await migrate(stack.database_url)

    admin = await provisioner(cluster)
    try:
        # Three replicas for every stream and bucket (consumers follow their stream's).
        js = admin.jetstream()
        names = [s.name for s in STREAMS] + [f"KV_{b}" for b in (KV_STARTS, KV_CANCELS, KV_RATES)]
        for name in [*names, f"OBJ_{OBJ_SUITES}"]:
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3, f"{name}: {info.config.num_replicas} replicas"

        await asyncio.to_thread(stack.start_fake_model, {"latency_ms": "60", "jitter_ms": "20", "seed": "7"})
        stack.start_services(extra_env={"EVALBUS_RETRY_BASE_S": "0.05", "EVALBUS_RETRY_MAX_S": "0.5"})
        await asyncio.to_thread(stack.wait_healthy, 180)

        batch_id = f"b-cluster-{int(time.time()) % 100000}"
        client = await connect(cluster.url, *stack.client_credentials)
        await start_batch(
            client, batch_id, write_suite(tmp_path / "suite.jsonl", PROMPTS), concurrency=4, timeout_s=5, max_retries=2
        )
        await client.close()

        # Mid-batch: some prompts through, most still to go.
        before = await wait_rows(stack.database_url, batch_id, at_least=PROMPTS // 5)
        leader = await stream_leader(admin, subjects.STREAM_EVENTS)
        t_kill = time.monotonic()
        cluster.node(leader).stop(kill=True)
        new_leader = await stream_leader(admin, subjects.STREAM_EVENTS)
        elected_s = time.monotonic() - t_kill
        assert new_leader != leader
        # The batch goes on with two nodes of three (a quorum), the killed one still down.
        during = await wait_rows(stack.database_url, batch_id, at_least=before + PROMPTS // 10)
        assert (await query(stack.database_url, "SELECT status FROM batches WHERE batch_id = :b", b=batch_id))[0][
            0
        ] == "running", f"the batch ended before the killed node came back: raise PROMPTS ({PROMPTS})"
        await asyncio.sleep(max(0.0, LEADER_DOWN_S - (time.monotonic() - t_kill)))
        await asyncio.to_thread(cluster.restart, leader)
        status = await wait_terminal(stack.database_url, batch_id)

        # Every prompt terminal, once: the stored totals equal the rows, which the natural keys keep unique.
        done = await accounted(stack.database_url, batch_id)
        db = stack.database_url
        prompts = (await query(db, "SELECT count(*) FROM prompts WHERE batch_id = :b", b=batch_id))[0][0]
        responses = (await query(db, "SELECT count(*) FROM responses WHERE batch_id = :b", b=batch_id))[0][0]
        lost = PROMPTS - (done.scored + done.failed)
        assert prompts == PROMPTS and lost == 0, f"lost {lost}"
        assert status in ("completed", "partial_failure")
        assert done.totals == (done.scored, done.failed, PROMPTS)
        assert done.scored <= int(str(responses)) <= PROMPTS
        # Nothing dead-lettered: a leader change is no message's fault.
        dlq = await js.stream_info(subjects.STREAM_DLQ)
        assert dlq.state.messages == 0, f"{dlq.state.messages} dead letters"
        # The restarted node caught up: it is a current replica of the events stream again.
        deadline = time.monotonic() + 60
        while True:
            info = await js.stream_info(subjects.STREAM_EVENTS)
            peers = {p.name: p for p in (info.cluster.replicas or [])} if info.cluster else {}
            if info.cluster and (info.cluster.leader == leader or (leader in peers and peers[leader].current)):
                break
            assert time.monotonic() < deadline, f"{leader} did not catch up: {info.cluster}"
            await asyncio.sleep(0.5)
        print(
            f"\ncluster: {PROMPTS} prompts, leader {leader} killed at {before} rows, {new_leader} elected in"
            f" {elected_s:.1f} s, {during} rows with the leader down, {leader} restarted; {status}:"
            f" {done.scored} scored, {done.failed} failed, 0 lost, 0 duplicated"
        )
        assert stack.check_alive() == []
    finally:
        await admin.close()
