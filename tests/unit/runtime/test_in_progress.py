"""One in-progress ticker per consumer keeps every held message alive, and only those."""

import asyncio

from services.runtime.messaging.keepalive import InProgress


class FakeMsg:
    def __init__(self) -> None:
        self.signals = 0

    async def in_progress(self) -> None:
        self.signals += 1


async def test_held_messages_are_signalled_each_period_until_discarded() -> None:
    alive = InProgress(lambda: 0.1)
    long, short = FakeMsg(), FakeMsg()
    alive.add(long)  # type: ignore[arg-type]
    alive.add(short)  # type: ignore[arg-type]
    await asyncio.sleep(0.02)
    alive.discard(short)  # type: ignore[arg-type]
    await asyncio.sleep(0.5)
    assert short.signals == 0  # done before its first period
    assert 3 <= long.signals <= 6  # one per 0.1-0.15 s
    alive.discard(long)  # type: ignore[arg-type]
    before = long.signals
    await asyncio.sleep(0.2)
    assert long.signals == before and len(alive) == 0
    assert alive._task is not None and alive._task.done()  # the ticker stops when nothing is held
    again = FakeMsg()
    alive.add(again)  # type: ignore[arg-type]  # and starts again on the next message
    await asyncio.sleep(0.2)
    assert again.signals >= 1
    await alive.aclose()


async def test_a_failing_signal_does_not_stop_the_others() -> None:
    class Broken(FakeMsg):
        async def in_progress(self) -> None:
            raise ConnectionError("gone")

    alive = InProgress(lambda: 0.05)
    ok = FakeMsg()
    alive.add(Broken())  # type: ignore[arg-type]
    alive.add(ok)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert ok.signals >= 2
    await alive.aclose()
