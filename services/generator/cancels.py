"""Where a batch's cancel is recorded: KV evalbus_cancels, which every runner and judge replica
watches (`services.runtime.messaging.cancels`)."""

from collections.abc import Awaitable, Callable
from typing import Protocol

from nats.js.kv import KeyValue


class CancelRecords(Protocol):
    async def record(self, batch_id: str, reason: str) -> None: ...


class KvCancelRecords:
    """CancelRecords over the evalbus_cancels bucket; the bucket is looked up once it is needed."""

    def __init__(self, bucket: Callable[[], Awaitable[KeyValue]]) -> None:
        self._bucket = bucket
        self._kv: KeyValue | None = None

    async def record(self, batch_id: str, reason: str) -> None:
        if self._kv is None:
            self._kv = await self._bucket()
        await self._kv.put(batch_id, reason.encode())
