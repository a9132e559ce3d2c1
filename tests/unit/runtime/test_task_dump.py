"""The SIGUSR1 task dump names the whole chain a task waits in, not only its outermost frame."""

import asyncio
import logging
import os
import signal

import pytest

from services.runtime.messaging.service import _awaiting, dump_tasks_on_sigusr1


async def test_the_chain_of_a_waiting_task_is_named_outermost_first() -> None:
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.create_task(outer())
    await asyncio.sleep(0)
    chain = _awaiting(task.get_coro())
    gate.set()
    await task
    assert [link.split("@")[0] for link in chain[:3]] == ["outer", "inner", "wait"]


async def test_sigusr1_logs_every_task(caplog: pytest.LogCaptureFixture) -> None:
    await dump_tasks_on_sigusr1()
    caplog.set_level(logging.WARNING, logger="evalbus.tasks")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await asyncio.sleep(0.1)
    finally:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGUSR1)
    dumps = [r.getMessage() for r in caplog.records if r.name == "evalbus.tasks"]
    assert dumps and "test_sigusr1_logs_every_task" in dumps[0]
