"""The model client a service uses, built from settings, with breaker changes published as events
and breaker state shared by the service's replicas (KV `evalbus_breakers`)."""

import asyncio
from dataclasses import dataclass

from faststream.nats import NatsBroker
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.ops import BreakerStateChanged
from contracts.topology import KV_BREAKERS, KV_LEASES, KV_RATES, LEASE_TTL_S
from services.runtime.messaging.cancels import CancelledBatches
from services.runtime.messaging.connection import jetstream
from services.runtime.messaging.publishing import encode
from services.runtime.messaging.service import Service
from services.runtime.models.client import ChatClient
from services.runtime.models.endpoints import Endpoint, Endpoints
from services.runtime.models.leases import KvSlotStore, SharedLeases, holder_id
from services.runtime.models.rate_budget import Limit, RateBudget
from services.runtime.models.shared_breaker import KvBreakerStore, SharedBreakers
from services.runtime.settings import Settings


def chat_client(settings: Settings, broker: NatsBroker, service: str) -> ChatClient:
    pending: set[asyncio.Task[object]] = set()

    def changed(endpoint: str, old: str, new: str) -> None:  # logged by the breaker itself
        evt = BreakerStateChanged(service=service, endpoint=endpoint, old_state=old, new_state=new)  # type: ignore[arg-type]
        task = asyncio.get_running_loop().create_task(
            jetstream(broker).publish(subjects.breaker(endpoint), encode(evt), stream=subjects.STREAM_OPS, timeout=5)
        )
        pending.add(task)  # a reference, or the task may be collected before it runs
        task.add_done_callback(pending.discard)

    async def rates_kv() -> KeyValue:
        return await jetstream(broker).key_value(KV_RATES)

    async def breakers_kv() -> KeyValue:
        return await jetstream(broker).key_value(KV_BREAKERS)

    def budget_for(endpoint: Endpoint) -> RateBudget | None:
        url = endpoint.url
        limits = settings.rate_limits
        limit = limits.get(url) or limits.get(url.rstrip("/")) or (limits.get(endpoint.name) if endpoint.name else None)
        if not limit:
            return None
        return RateBudget(rates_kv, url, Limit(rpm=limit.get("rpm"), tpm=limit.get("tpm")))

    return ChatClient(
        endpoint_concurrency=settings.endpoint_concurrency,
        retry_base_s=settings.retry_base_s,
        retry_max_s=settings.retry_max_s,
        breaker_fail_max=settings.breaker_fail_max,
        breaker_reset_s=settings.breaker_reset_s,
        on_breaker_change=changed,
        rate_budget=budget_for,
        breaker_sharing=SharedBreakers(KvBreakerStore(breakers_kv), service),
        # Concurrency caps shared by every replica of every service calling an endpoint.
        leases=SharedLeases(
            KvSlotStore(lambda: jetstream(broker), KV_LEASES, nc=lambda: broker.config.connection_state.connection),
            ttl_s=LEASE_TTL_S,
            holder=holder_id(service),
        ),
    )


@dataclass(frozen=True)
class ModelCalling:
    """What a model-calling service (chat-runner, judge) holds: the shared client, closed when the
    service stops, the endpoints batches may use, and the cancelled batches, watched while it runs."""

    model: ChatClient
    endpoints: Endpoints
    cancelled: CancelledBatches


def model_calling(service: Service) -> ModelCalling:
    model = chat_client(service.settings, service.broker, service.name)
    cancelled = CancelledBatches()
    service.background(lambda: cancelled.watch(service.js))
    if isinstance(model.breaker_sharing, SharedBreakers):
        service.background(model.breaker_sharing.watch)
    service.on_stopped(model.aclose)
    return ModelCalling(model, Endpoints.from_settings(service.settings), cancelled)
