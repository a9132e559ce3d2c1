"""Who started a batch id: an atomic claim in KV evalbus_starts, taken before the batch is planned.

Batch ids are single-use: the first start of an id creates its key (`KeyValue.create` fails when
the key exists), so of near-simultaneous starts exactly one wins, and a start of an id that was
ever accepted or rejected is answered as a repeat. The claim records which start took it (its
event id and a digest of its bytes): a redelivery of that same message (a crash mid-publish, a
re-publish of the same event) finishes the work instead of being taken for a repeat.
"""

import hashlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, ValidationError


class StartState(StrEnum):
    CLAIMED = "claimed"  # a start is being planned and published
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class StartClaim(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    state: StartState
    event_id: str
    digest: str  # sha256 of the start message's bytes
    claimed_at: datetime

    @classmethod
    def new(cls, event_id: str, data: bytes) -> "StartClaim":
        return cls(
            state=StartState.CLAIMED,
            event_id=event_id,
            digest=hashlib.sha256(data).hexdigest(),
            claimed_at=datetime.now(UTC),
        )

    @classmethod
    def parse(cls, value: bytes | None) -> "StartClaim":
        """A stored claim; a value from before claims (`b"accepted"`) is a settled start of unknown origin."""
        try:
            return cls.model_validate_json(value or b"")
        except ValidationError:
            legacy = (value or b"").decode("utf-8", errors="replace")
            state = StartState.REJECTED if legacy == StartState.REJECTED else StartState.ACCEPTED
            return cls(state=state, event_id="", digest="", claimed_at=datetime(1970, 1, 1, tzinfo=UTC))

    def same_start(self, other: "StartClaim") -> bool:
        return bool(self.digest) and (self.event_id, self.digest) == (other.event_id, other.digest)

    @property
    def settled(self) -> bool:
        return self.state is not StartState.CLAIMED

    def settle(self, state: StartState) -> "StartClaim":
        return self.model_copy(update={"state": state})

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


async def claim(kv: KeyValue, batch_id: str, mine: StartClaim) -> tuple[StartClaim, bool]:
    """Claim `batch_id` for `mine`: (mine, True) if this call created the key, else (the stored
    claim, False). Atomic: two callers never both get True."""
    for _ in range(3):  # the key can expire (bucket TTL) between a failed create and the get
        try:
            await kv.create(batch_id, mine.to_bytes())
            return mine, True
        except KeyWrongLastSequenceError:
            try:
                entry = await kv.get(batch_id)
            except KeyNotFoundError:
                continue
            return StartClaim.parse(entry.value), False
    raise RuntimeError(f"could not claim or read KV key {batch_id}")


async def settle_claim(kv: KeyValue, batch_id: str, mine: StartClaim, state: StartState) -> None:
    await kv.put(batch_id, mine.settle(state).to_bytes())


class StartClaims(Protocol):
    """The record of which start took which batch id (KV evalbus_starts)."""

    async def claim(self, batch_id: str, mine: StartClaim) -> tuple[StartClaim, bool]: ...

    async def settle(self, batch_id: str, mine: StartClaim, state: StartState) -> None: ...


class StartedBatches(Protocol):
    """Whether a batch id was ever started (claimed by a start)."""

    async def was_started(self, batch_id: str) -> bool: ...


class KvStartClaims:
    """StartClaims and StartedBatches over the evalbus_starts bucket; `bucket` looks it up (once
    the connection is up), and the lookup is kept once it succeeded."""

    def __init__(self, bucket: Callable[[], Awaitable[KeyValue]]) -> None:
        self._bucket = bucket
        self._kv: KeyValue | None = None

    async def _get_kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._bucket()
        return self._kv

    async def claim(self, batch_id: str, mine: StartClaim) -> tuple[StartClaim, bool]:
        return await claim(await self._get_kv(), batch_id, mine)

    async def settle(self, batch_id: str, mine: StartClaim, state: StartState) -> None:
        await settle_claim(await self._get_kv(), batch_id, mine, state)

    async def was_started(self, batch_id: str) -> bool:
        try:
            await (await self._get_kv()).get(batch_id)
        except KeyNotFoundError:
            return False
        return True
