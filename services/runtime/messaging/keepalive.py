"""Keep-alive: in-progress signals for messages still being worked on, so a long model call or a
slow batch is not redelivered."""

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.msg import Msg

log = logging.getLogger("evalbus.bus")


class InProgress:
    """Keeps every message a consumer works on alive with one periodic task (not a task and a
    timer per message). A message held for `every_s()` gets an in-progress signal, and another
    each `every_s()` after that (checked every half period, so at most 1.5 periods apart;
    every_s is a third of the ack wait)."""

    def __init__(self, every_s: Callable[[], float]) -> None:
        self._every_s = every_s
        self._held: dict[int, tuple[Msg, float]] = {}  # by id(): nats-py's Msg is not hashable
        self._task: asyncio.Task[None] | None = None

    def add(self, msg: "Msg") -> None:
        loop = asyncio.get_running_loop()
        self._held[id(msg)] = (msg, loop.time())
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._tick())

    def discard(self, msg: "Msg") -> None:
        self._held.pop(id(msg), None)

    def __len__(self) -> int:
        return len(self._held)

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while self._held:  # ends when nothing is held; add() starts it again
            every = self._every_s()
            await asyncio.sleep(every / 2)
            now = loop.time()
            due = [(key, msg) for key, (msg, since) in self._held.items() if now - since >= every]
            for key, msg in due:
                self._held[key] = (msg, now)
            for key, msg in due:
                if self._held.get(key, (None,))[0] is not msg:  # finished meanwhile
                    continue
                try:
                    await msg.in_progress()
                except Exception as exc:
                    log.debug("in_progress failed: %r", exc)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
