"""In-memory stand-ins for what the generator's handlers touch, at two levels:

- the adapters handlers are given (FakePublisher, FakeClaims, FakeSuites, FakeCancels), for
  handler unit tests;
- KV buckets, JetStream publishes and a message (FakeKV, FakeJS, FakeMsg), for tests that deliver
  a message through the real handling path and the real KV adapters (`deliver_start`,
  `deliver_cancel`).

The KV yields to the event loop before each operation, as a round trip to the server does, so
handlers running concurrently interleave as they would against a real server; `create` is atomic
as the server's expected-last-sequence check is.
"""

import asyncio
import functools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contracts import subjects
from contracts.base import Event
from contracts.events import BatchAccepted, BatchRejected, PromptQueued
from contracts.ops import DeadLetter
from contracts.topology import KV_CANCELS, KV_STARTS
from services.generator.cancels import KvCancelRecords
from services.generator.claims import KvStartClaims, StartClaim, StartState
from services.generator.handlers import (
    SuiteAccess,
    is_transient,
    on_cancel_requested,
    on_start_requested,
    read_cancel,
    read_start_delivery,
)
from services.generator.suite_loader import SuiteError, SuiteFile
from services.generator.suite_objects import SuiteStore
from services.runtime.messaging.handling import Policy, Unexpected, handle_one
from services.runtime.messaging.keepalive import InProgress
from services.runtime.messaging.publishing import JetStreamPublisher

SERVICE = "generator"


class FakePublisher:
    """Collects what a handler publishes; `fail_after` publishes succeed, then one raises `error`."""

    def __init__(self, fail_after: int | None = None, error: type[Exception] = nats.errors.TimeoutError) -> None:
        self.events: list[Event] = []
        self.fail_after = fail_after
        self.error = error

    async def publish(self, events: Sequence[Event]) -> None:
        await asyncio.sleep(0)
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.fail_after = None
                raise self.error
            self.fail_after -= 1
        self.events.extend(events)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class FakeClaims:
    """StartClaims and StartedBatches in a dict; `claim` is atomic, as KV create is."""

    def __init__(self) -> None:
        self.held: dict[str, StartClaim] = {}

    async def claim(self, batch_id: str, mine: StartClaim) -> tuple[StartClaim, bool]:
        await asyncio.sleep(0)
        if batch_id in self.held:
            return self.held[batch_id], False
        self.held[batch_id] = mine
        return mine, True

    async def settle(self, batch_id: str, mine: StartClaim, state: StartState) -> None:
        await asyncio.sleep(0)
        self.held[batch_id] = mine.settle(state)

    async def was_started(self, batch_id: str) -> bool:
        await asyncio.sleep(0)
        return batch_id in self.held


class FakeCancels:
    def __init__(self) -> None:
        self.recorded: dict[str, str] = {}

    async def record(self, batch_id: str, reason: str) -> None:
        self.recorded[batch_id] = reason


class FakeSuites:
    """Uploaded suites as local files by object name; records deletions."""

    def __init__(self, objects: dict[str, Path] | None = None) -> None:
        self.objects = dict(objects or {})
        self.deleted: list[str] = []

    async def download(self, batch_id: str, name: str, label: str, into: Path, max_bytes: int) -> SuiteFile:
        if name not in self.objects:
            raise SuiteError(f"no uploaded suite {name!r} (upload it before the start, once per batch)")
        target = into / f"{batch_id}{self.objects[name].suffix}"
        shutil.copyfile(self.objects[name], target)
        return SuiteFile(path=target, label=label)

    async def delete(self, name: str) -> None:
        self.deleted.append(name)
        self.objects.pop(name, None)


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


def _policy(js: Any, parse: Any) -> Policy[Any]:
    return Policy(
        SERVICE,
        parse,
        JetStreamPublisher(lambda: js),
        InProgress(lambda: 60.0),
        transient=is_transient,
        unexpected=Unexpected.DEAD_LETTER,
    )


async def deliver_start(js: Any, msg: Any, access: SuiteAccess | None = None, suites: SuiteStore | None = None) -> str:
    """Deliver a start as the generator's consumer does: the real parser, handling path and KV
    adapters over `js` (a FakeJS, or a real JetStream context). Returns how it was settled."""
    work = functools.partial(
        on_start_requested,
        publisher=JetStreamPublisher(lambda: js),
        claims=KvStartClaims(lambda: js.key_value(KV_STARTS)),
        suites=suites or FakeSuites(),
        access=access or SuiteAccess(),
    )
    await handle_one(_policy(js, read_start_delivery), msg, work)
    return str(msg.outcome)


async def deliver_cancel(js: Any, msg: FakeMsg) -> str:
    work = functools.partial(
        on_cancel_requested,
        starts=KvStartClaims(lambda: js.key_value(KV_STARTS)),
        cancels=KvCancelRecords(lambda: js.key_value(KV_CANCELS)),
    )
    await handle_one(_policy(js, read_cancel), msg, work)
    return msg.outcome
