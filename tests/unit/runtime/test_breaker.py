import asyncio

import pytest

from services.runtime.models.breaker import ProviderBreaker


class Unhealthy(Exception):
    pass


class BadRequest(Exception):
    pass


def breaker(changes: list[tuple[str, str]], reset_s: float = 0.2) -> ProviderBreaker:
    return ProviderBreaker(
        "ep",
        fail_max=3,
        reset_s=reset_s,
        counts=lambda e: isinstance(e, Unhealthy),
        on_change=lambda ep, old, new: changes.append((old, new)),
    )


async def fail() -> None:
    raise Unhealthy("503")


async def test_opens_after_consecutive_failures_and_errors_come_out_unchanged() -> None:
    changes: list[tuple[str, str]] = []
    b = breaker(changes)
    for _ in range(3):
        with pytest.raises(Unhealthy):
            await b.call(fail)
    assert b.state == "open" and changes == [("closed", "open")]


async def test_client_errors_do_not_trip_it() -> None:
    b = breaker([])

    async def bad() -> None:
        raise BadRequest("400")

    for _ in range(10):
        with pytest.raises(BadRequest):
            await b.call(bad)
    assert b.state == "closed"


async def test_open_breaker_pauses_then_probes_one_at_a_time_and_restores_concurrency() -> None:
    changes: list[tuple[str, str]] = []
    b = breaker(changes, reset_s=0.3)
    for _ in range(3):
        with pytest.raises(Unhealthy):
            await b.call(fail)
    running = 0
    peak = 0
    ended = 0
    ended_at_start: list[int] = []  # per call: how many calls had ended when it started

    async def ok() -> str:
        nonlocal running, peak, ended
        running += 1
        peak = max(peak, running)
        ended_at_start.append(ended)
        await asyncio.sleep(0.05)
        running -= 1
        ended += 1
        return "ok"

    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(*(b.call(ok) for _ in range(5)))
    assert results == ["ok"] * 5
    assert loop.time() - started >= 0.25  # the pause was waited out, not failed
    assert b.state == "closed" and ("open", "half_open") in changes and ("half_open", "closed") in changes
    # The probe ran alone; once it closed the breaker, the callers that had queued meanwhile overlapped.
    assert ended_at_start[0] == 0 and all(n >= 1 for n in ended_at_start[1:])
    assert peak >= 2
    peak = 0
    await asyncio.gather(*(b.call(ok) for _ in range(5)))
    assert peak == 5


async def test_concurrency_comes_back_while_callers_keep_arriving() -> None:
    # A busy service keeps calling: callers that queued while the breaker was open went on one by
    # one after it closed, new callers queued behind them, and the endpoint stayed at one call at
    # a time for good (a chaos run: 37 calls/s before a pause, 8/s after it, to the end).
    b = breaker([], reset_s=0.2)
    for _ in range(3):
        with pytest.raises(Unhealthy):
            await b.call(fail)
    running = 0
    peak_after_close = 0

    async def ok() -> None:
        nonlocal running, peak_after_close
        running += 1
        if b.state == "closed":
            peak_after_close = max(peak_after_close, running)
        await asyncio.sleep(0.05)
        running -= 1

    async def worker() -> None:  # like a consumer slot: the next message as soon as one is done
        for _ in range(15):
            await b.call(ok)

    await asyncio.gather(*(worker() for _ in range(8)))
    assert b.state == "closed"
    assert peak_after_close >= 4  # 8 once every worker is back (one at a time was 1)


async def test_a_failed_probe_reopens_it() -> None:
    changes: list[tuple[str, str]] = []
    b = breaker(changes, reset_s=0.1)
    for _ in range(3):
        with pytest.raises(Unhealthy):
            await b.call(fail)
    with pytest.raises(Unhealthy):
        await b.call(fail)
    assert b.state == "open" and changes[-1] == ("half_open", "open")
