"""Creates the streams and durable consumers of `contracts.topology` on a NATS server.

This is the provisioner's job (`evalbus migrate`, the compose `migrate` step): services only
bind to what exists. Applying twice is harmless; an existing consumer whose config drifted is
reported, since JetStream cannot change a durable's filter in place.

On a JetStream cluster of three or more servers every stream and bucket gets three replicas (a
consumer follows its stream's); on a single server, one. The size is read from the INFO the
server sends on connect: a clustered server names its cluster and advertises every member's
client URL. Replicas are never lowered on an existing stream, so a migrate run while a node is
down (fewer members advertised) leaves a three-replica stream as it is.
"""

import asyncio
import logging
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from contracts.topology import (
    CONSUMERS,
    KV_BREAKERS,
    KV_CANCELS,
    KV_LEASES,
    KV_RATES,
    KV_STARTS,
    LEASE_TTL_S,
    OBJ_SUITES,
    OBJ_SUITES_MAX_AGE_S,
    STREAMS,
    ConsumerSpec,
    StreamSpec,
)

log = logging.getLogger("evalbus.topology")

CLUSTER_REPLICAS = 3  # survives one node down with a quorum left (2 of 3)
READY_WITHIN_S = 60.0  # a new cluster elects its JetStream meta leader in a few seconds


def cluster_size(server_info: dict[str, Any]) -> int:
    """Servers in the cluster of the server that sent `server_info` (its INFO): 1 when it is not
    clustered. `connect_urls` lists every member's client URL, its own included, unless the
    cluster runs with `no_advertise` (then this counts 1: set `replicas` explicitly)."""
    if not server_info.get("cluster"):
        return 1
    return max(1, len(set(server_info.get("connect_urls") or [])))


def replicas_for(size: int) -> int:
    return CLUSTER_REPLICAS if size >= CLUSTER_REPLICAS else 1


def stream_config(spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        num_replicas=replicas,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=spec.max_age_s,
        duplicate_window=spec.duplicate_window_s,
        max_msgs_per_subject=spec.max_msgs_per_subject,
    )


def lease_bucket_config(replicas: int = 1) -> StreamConfig:
    """The leases bucket as nats-py's `create_key_value` makes a bucket, except that deleting a
    message is allowed: a lease is released by deleting its own revision, which leaves no
    tombstone (the next claim is one create) and cannot remove a lease someone else took after
    it expired. On file, not in memory: a single server forgets a memory stream itself when it
    restarts, and with no bucket every model call would wait for good (leases are seldom written:
    a process reuses its own). Replicated like the other buckets in a cluster, so model calls do
    not wait for a lost node that held it."""
    return StreamConfig(
        name=f"KV_{KV_LEASES}",
        subjects=[f"$KV.{KV_LEASES}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=LEASE_TTL_S,
        max_msgs_per_subject=1,
        duplicate_window=LEASE_TTL_S,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        allow_direct=True,
        deny_delete=False,
        num_replicas=replicas,
    )


def consumer_config(spec: ConsumerSpec, ack_wait_s: float | None = None) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=spec.durable,
        filter_subject=spec.filter_subject or None,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s or spec.ack_wait_s,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
        backoff=list(spec.backoff_s) or None,
    )


async def _connect_ready(nats_url: str, user: str | None, password: str | None, within_s: float) -> Client:
    """A connection whose server answers JetStream requests: a cluster just started has no meta
    leader for a few seconds ("JetStream system temporarily unavailable", or no answer). Each try
    is a new connection, so the INFO it keeps is the server's view once the cluster has formed."""
    # A logged-in provisioner reads its replies in its own inbox, _INBOX.<user>.> (nats-server.conf).
    prefix = f"_INBOX.{user}" if user else "_INBOX"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        nc = await nats.connect(
            nats_url.split(","), user=user, password=password, connect_timeout=5, inbox_prefix=prefix
        )
        try:
            await nc.jetstream(timeout=5).account_info()
            return nc
        except (NatsError, TimeoutError) as exc:
            await nc.close()
            if loop.time() > deadline:
                raise RuntimeError(f"JetStream is not answering on {nats_url} after {within_s:g}s: {exc!r}") from exc
            log.info("JetStream not ready yet (%r); retrying", exc)
            await asyncio.sleep(1)


async def _raise_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    """A bucket's stream (KV_<name>, OBJ_<name>) made with fewer replicas is scaled up in place."""
    cfg = (await js.stream_info(stream)).config
    if (cfg.num_replicas or 1) < replicas:
        cfg.num_replicas = replicas
        await js.update_stream(cfg)


async def _ensure_lease_bucket(js: JetStreamContext, replicas: int) -> None:
    """The leases bucket on file with at least `replicas`; one made in memory by an earlier version
    is made again (its leases expire within seconds anyway)."""
    try:
        cfg = (await js.stream_info(f"KV_{KV_LEASES}")).config
    except NotFoundError:
        await js.add_stream(lease_bucket_config(replicas))
        return
    if cfg.storage != StorageType.FILE:
        await js.delete_stream(f"KV_{KV_LEASES}")
        await js.add_stream(lease_bucket_config(max(replicas, cfg.num_replicas or 1)))
    else:
        await _raise_replicas(js, f"KV_{KV_LEASES}", replicas)


async def apply_topology(
    nats_url: str,
    *,
    user: str | None = None,
    password: str | None = None,
    ack_wait_s: float | None = None,
    replicas: int | None = None,
) -> list[str]:
    """Create or update streams and consumers; returns drift warnings.

    `ack_wait_s` overrides every consumer's ack wait (how soon a crashed worker's messages are
    redelivered); services read the value from the server, so nothing else changes with it.
    `replicas` overrides the count read from the cluster's size (see the module's doc)."""
    nc = await _connect_ready(nats_url, user, password, READY_WITHIN_S)
    warnings: list[str] = []
    try:
        size = cluster_size(nc._server_info)  # nats-py keeps the connect INFO only here
        n = replicas or replicas_for(size)
        log.info("JetStream on %d server(s): streams and buckets with %d replica(s)", size, n)
        js = nc.jetstream()
        for spec in STREAMS:
            try:
                current = (await js.stream_info(spec.name)).config
                await js.update_stream(stream_config(spec, max(n, current.num_replicas or 1)))
            except NotFoundError:
                await js.add_stream(stream_config(spec, n))
        for bucket in (KV_STARTS, KV_CANCELS, KV_RATES, KV_BREAKERS):
            try:
                await js.key_value(bucket)
                await _raise_replicas(js, f"KV_{bucket}", n)
            except BucketNotFoundError:
                await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=30 * 86_400, replicas=n))
        await _ensure_lease_bucket(js, n)
        try:
            await js.object_store(OBJ_SUITES)
            await _raise_replicas(js, f"OBJ_{OBJ_SUITES}", n)
        except BucketNotFoundError:
            cfg_obj = ObjectStoreConfig(
                bucket=OBJ_SUITES, ttl=OBJ_SUITES_MAX_AGE_S, storage=StorageType.FILE, replicas=n
            )
            await js.create_object_store(OBJ_SUITES, cfg_obj)
        for cspec in CONSUMERS:
            want = consumer_config(cspec, ack_wait_s)
            try:
                info = await js.consumer_info(cspec.stream, cspec.durable)
            except NotFoundError:
                await js.add_consumer(cspec.stream, want)
                continue
            have = info.config
            if (have.filter_subject or None) != want.filter_subject:
                warnings.append(f"consumer {cspec.durable}: filter {have.filter_subject!r} != {want.filter_subject!r}")
                continue
            # ack_wait, max_deliver, max_ack_pending and backoff can be updated in place.
            await js.add_consumer(cspec.stream, want)
    finally:
        await nc.close()
    for w in warnings:
        log.warning(w)
    return warnings
