"""Creates the streams and durable consumers of `contracts.topology` on a NATS server.

This is the provisioner's job (`evalbus migrate`, the compose `migrate` step): services only
bind to what exists. Applying twice is harmless; an existing consumer whose config drifted is
reported, since JetStream cannot change a durable's filter in place.
"""

import logging

import nats
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


def stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=spec.max_age_s,
        duplicate_window=spec.duplicate_window_s,
        max_msgs_per_subject=spec.max_msgs_per_subject,
    )


def lease_bucket_config() -> StreamConfig:
    """The leases bucket as nats-py's `create_key_value` makes a bucket, except that deleting a
    message is allowed: a lease is released by deleting its own revision, which leaves no
    tombstone (the next claim is one create) and cannot remove a lease someone else took after
    it expired. In memory: leases are worth nothing after a server restart."""
    return StreamConfig(
        name=f"KV_{KV_LEASES}",
        subjects=[f"$KV.{KV_LEASES}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.MEMORY,
        max_age=LEASE_TTL_S,
        max_msgs_per_subject=1,
        duplicate_window=LEASE_TTL_S,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        allow_direct=True,
        deny_delete=False,
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


async def apply_topology(
    nats_url: str, *, user: str | None = None, password: str | None = None, ack_wait_s: float | None = None
) -> list[str]:
    """Create or update streams and consumers; returns drift warnings.

    `ack_wait_s` overrides every consumer's ack wait (how soon a crashed worker's messages are
    redelivered); services read the value from the server, so nothing else changes with it."""
    # A logged-in provisioner reads its replies in its own inbox, _INBOX.<user>.> (nats-server.conf).
    prefix = f"_INBOX.{user}" if user else "_INBOX"
    nc = await nats.connect(nats_url.split(","), user=user, password=password, connect_timeout=5, inbox_prefix=prefix)
    warnings: list[str] = []
    try:
        js = nc.jetstream()
        for spec in STREAMS:
            cfg = stream_config(spec)
            try:
                await js.stream_info(spec.name)
                await js.update_stream(cfg)
            except NotFoundError:
                await js.add_stream(cfg)
        for bucket in (KV_STARTS, KV_CANCELS, KV_RATES):
            try:
                await js.key_value(bucket)
            except BucketNotFoundError:
                await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=30 * 86_400))
        try:
            await js.key_value(KV_LEASES)
        except BucketNotFoundError:
            await js.add_stream(lease_bucket_config())
        try:
            await js.object_store(OBJ_SUITES)
        except BucketNotFoundError:
            cfg_obj = ObjectStoreConfig(bucket=OBJ_SUITES, ttl=OBJ_SUITES_MAX_AGE_S, storage=StorageType.FILE)
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
