"""Fakes for the broker side of `services/runtime/messaging/handling.py`, shared by the handler
tests: a JetStream message that records how it was settled, and a JetStream context whose
publishes all succeed and are kept."""

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from contracts import subjects
from contracts.ops import DeadLetter
from services.runtime.messaging.handling import Invalid, Parse, Policy, Unexpected, never_transient
from services.runtime.messaging.keepalive import InProgress
from services.runtime.messaging.publishing import JetStreamPublisher


class FakeMsg:
    def __init__(self, subject: str, data: bytes, seq: int = 1, delivered: int = 1) -> None:
        self.subject, self.data, self.headers = subject, data, None
        self.metadata = SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=seq))
        self.outcomes: list[tuple[str, float | None]] = []  # ("ack", None) or ("nak", delay)

    @property
    def settled(self) -> list[str]:
        return [verb for verb, _ in self.outcomes]

    async def ack(self) -> None:
        self.outcomes.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.outcomes.append(("nak", delay))

    async def in_progress(self) -> None:
        pass


class FakeJs:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes, **kw: Any) -> Any:
        self.published.append((subject, payload))
        return SimpleNamespace(stream="S", seq=len(self.published), duplicate=False)

    async def publish_async(self, subject: str, payload: bytes, **kw: Any) -> "asyncio.Future[Any]":
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(await self.publish(subject, payload, **kw))
        return fut

    def letters(self, service: str | None = None) -> list[DeadLetter]:
        """The dead letters published (of one service, or of all)."""
        return [
            DeadLetter.model_validate_json(p)
            for s, p in self.published
            if (s == subjects.dlq(service) if service else s.startswith(subjects.dlq("")))
        ]


def policy_for(
    js: FakeJs,
    parse: Parse[Any],
    service: str = "t",
    *,
    invalid: Invalid = Invalid.DEAD_LETTER,
    transient: Callable[[BaseException], bool] = never_transient,
    unexpected: Unexpected = Unexpected.RETRY,
) -> Policy[Any]:
    """A consumer's policy over the fake broker, as `Service` builds it for a declaration."""
    publisher = JetStreamPublisher(lambda: js)  # type: ignore[arg-type, return-value]
    return Policy(service, parse, publisher, InProgress(lambda: 30.0), invalid, transient, unexpected)
