"""In-memory stand-ins for what the generator's handlers touch: KV buckets, JetStream publishes, a message.

The KV yields to the event loop before each operation, as a round trip to the server does, so
handlers running concurrently interleave as they would against a real server; `create` is atomic
as the server's expected-last-sequence check is.
"""

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts import subjects
from contracts.events import BatchAccepted, BatchRejected, PromptQueued
from contracts.ops import DeadLetter


@dataclass
class Entry:
    key: str
    value: bytes
    revision: int


class FakeKV:
    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self._rev = 0

    async def get(self, key: str) -> Entry:
        await asyncio.sleep(0)
        if key not in self.data:
            raise KeyNotFoundError
        return self.data[key]

    def _write(self, key: str, value: bytes) -> int:
        self._rev += 1
        self.data[key] = Entry(key, value, self._rev)
        return self._rev

    async def put(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        await asyncio.sleep(0)
        if key in self.data:
            raise KeyWrongLastSequenceError
        return self._write(key, value)  # checked and written in one step, as the server does


@dataclass
class FakeJS:
    """Publishes are stored like a stream with a dedup window: a repeated Nats-Msg-Id is dropped."""

    buckets: dict[str, FakeKV] = field(default_factory=dict)
    published: list[tuple[str, bytes]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    msg_ids: set[str] = field(default_factory=set)
    fail_after: int | None = None  # publishes that succeed before the next one times out

    async def key_value(self, bucket: str) -> FakeKV:
        return self.buckets.setdefault(bucket, FakeKV())

    def _store(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> SimpleNamespace:
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.fail_after = None
                raise nats.errors.TimeoutError
            self.fail_after -= 1
        msg_id = (headers or {}).get("Nats-Msg-Id")
        duplicate = msg_id is not None and msg_id in self.msg_ids
        if msg_id is not None:
            self.msg_ids.add(msg_id)
        if not duplicate:
            self.published.append((subject, payload))
        return SimpleNamespace(stream="EVALBUS_EVENTS", seq=len(self.published), duplicate=duplicate)

    async def publish_async(
        self, subject: str, payload: bytes, headers: Any = None, stream: Any = None, wait_stall: Any = None
    ) -> Any:
        fut: asyncio.Future[SimpleNamespace] = asyncio.get_running_loop().create_future()
        fut.set_result(self._store(subject, payload, headers))
        return fut

    async def publish(self, subject: str, payload: bytes, timeout: Any = None, stream: Any = None, headers: Any = None):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0)
        if subject.startswith(subjects.dlq("")):
            self.dead_letters.append(DeadLetter.model_validate_json(payload))
            return SimpleNamespace(stream="EVALBUS_DLQ", seq=len(self.dead_letters), duplicate=False)
        return self._store(subject, payload, headers)

    def events(self, verb: str) -> list[bytes]:
        return [p for s, p in self.published if s.endswith(verb)]

    def accepted(self) -> list[BatchAccepted]:
        return [BatchAccepted.model_validate_json(p) for p in self.events(".batch.accepted")]

    def rejected(self) -> list[BatchRejected]:
        return [BatchRejected.model_validate_json(p) for p in self.events(".batch.rejected")]

    def queued(self) -> list[PromptQueued]:
        return [PromptQueued.model_validate_json(p) for p in self.events(".prompt.queued")]


class FakeMsg:
    """A JetStream message as a handler sees it; records how it was settled."""

    _seq = 0

    def __init__(self, subject: str, data: bytes, delivered: int = 1) -> None:
        FakeMsg._seq += 1
        self.subject = subject
        self.data = data
        self.seq = FakeMsg._seq
        self.delivered = delivered
        self.settled: list[tuple[str, float | None]] = []

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(num_delivered=self.delivered, sequence=SimpleNamespace(stream=self.seq))

    def redelivered(self) -> "FakeMsg":
        """The same stored message, delivered once more."""
        again = FakeMsg(self.subject, self.data, self.delivered + 1)
        again.seq = self.seq
        return again

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def in_progress(self) -> None:
        pass

    @property
    def outcome(self) -> str:
        return self.settled[-1][0] if self.settled else "unsettled"
