"""The set of cancelled batches, kept current from the `evalbus_cancels` KV bucket.

Every replica of every model-calling service watches the bucket, so a cancel reaches all of
them without a broadcast protocol of our own, and a restarted replica reads the whole set again.
"""

import asyncio
import logging

from nats.js import JetStreamContext

from contracts.topology import KV_CANCELS

log = logging.getLogger("evalbus.cancels")


class CancelledBatches:
    def __init__(self) -> None:
        self._ids: set[str] = set()

    def __contains__(self, batch_id: object) -> bool:
        return batch_id in self._ids

    def add(self, batch_id: str) -> None:
        self._ids.add(batch_id)

    async def watch(self, js: JetStreamContext) -> None:
        """Follow the bucket forever (re-watching after any error)."""
        while True:
            try:
                kv = await js.key_value(KV_CANCELS)
                watcher = await kv.watchall()
                async for entry in watcher:
                    if entry is not None and entry.key:
                        self._ids.add(entry.key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("watching %s failed (%r); retrying", KV_CANCELS, exc)
                await asyncio.sleep(2)
