"""The call ledger in PostgreSQL: bills stored once per call id whatever is re-delivered, billed
sums beside the useful ones in the report, and each prompt's calls in its samples."""

import secrets

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.base import Event
from contracts.enums import BatchStatus, Stage
from contracts.events import CallAttempt, CallBilled, Usage
from contracts.queries import SamplesQuery
from services.recorder import reporting, sample_queries
from services.recorder.repository import record
from services.recorder.tracker import Tracker
from services.runtime.messaging.handling import Refusal
from services.runtime.messaging.publishing import JetStreamPublisher
from tests.factories import BatchEvents

pytestmark = pytest.mark.integration
N = 4
RETRIED = [
    CallAttempt(outcome="rate_limit", status=429, latency_ms=3.0, retry_in_s=2.1, reason="HTTP 429: slow down"),
    CallAttempt(outcome="server_error", status=500, latency_ms=4.0, retry_in_s=0.3, reason="HTTP 500: oops"),
    CallAttempt(outcome="ok", status=200, tokens_in=10, tokens_out=3, latency_ms=9.0),
]


def batch_with_bills(batch: BatchEvents) -> tuple[list[Event], list[CallBilled]]:
    """Every prompt through the pipeline with its chat bill; prompt 0's chat call retried, prompt
    1's made twice (a redelivery: its responded event twice, the same id, and two bills); one
    batched judge call for prompts 0-2 and one for prompt 3."""
    bills = [batch.billed(0, attempts=RETRIED)] + [batch.billed(i) for i in range(1, N)]
    bills.append(batch.billed(1))  # the repeat after the redelivery
    bills += [
        batch.billed(0, 1, 2, stage=Stage.JUDGE, tokens=(300, 60)),
        batch.billed(3, stage=Stage.JUDGE, tokens=(100, 20)),
    ]
    usage = Usage(tokens_in=10, tokens_out=3, cost_usd=13e-6)
    events: list[Event] = [batch.accepted()]
    for i in range(N):
        events += [batch.queued(i), batch.responded(i, usage=usage), batch.judged(i), batch.scored(i)]
    events += [batch.responded(1, usage=usage), *bills]
    return events, bills


async def test_bills_are_stored_once_each_and_billed_sums_stand_beside_useful_ones(servers) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    batch = BatchEvents("b-ledger-" + secrets.token_hex(3), N)
    events, bills = batch_with_bills(batch)
    try:
        async with engine.begin() as conn:
            await record(conn, events)
        async with engine.begin() as conn:  # the whole stream again, as after a crash before the acks
            await record(conn, list(reversed(events)))
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT count(*), sum(attempt_count) FROM model_calls WHERE batch_id = :b"),
                    {"b": batch.batch_id},
                )
            ).one()
            assert tuple(rows) == (len(bills), len(bills) + 2)
            rep = await reporting.report(conn, batch.batch_id, BatchStatus.COMPLETED)
        assert rep is not None
        # useful: the recorded results (one response per prompt); billed: every call
        assert (rep.tokens_in, rep.tokens_out) == (N * 10, N * 3)
        assert (rep.billed_tokens_in, rep.billed_tokens_out) == ((N + 1) * 10, (N + 1) * 3)
        assert (rep.billed_judge_tokens_in, rep.billed_judge_tokens_out) == (400, 80)
        assert rep.billed_cost_usd == pytest.approx(sum(b.cost_usd for b in bills))
        assert (rep.billed_calls, rep.billed_attempts) == (len(bills), len(bills) + 2)
    finally:
        await engine.dispose()


async def test_each_sample_lists_the_calls_billed_for_its_prompt_with_their_attempts(servers) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    batch = BatchEvents("b-ledger-" + secrets.token_hex(3), N)
    events, _ = batch_with_bills(batch)
    try:
        async with engine.begin() as conn:
            await record(conn, events)
        async with engine.connect() as conn:
            page = await sample_queries.samples_page(conn, SamplesQuery(batch_id=batch.batch_id), 900_000)
        assert page is not None
        calls = {s.index: [(c.stage, len(c.attempts), c.prompts) for c in s.calls] for s in page.items}
        assert calls == {
            0: [("chat", 3, 1), ("judge", 1, 3)],
            1: [("chat", 1, 1), ("chat", 1, 1), ("judge", 1, 3)],
            2: [("chat", 1, 1), ("judge", 1, 3)],
            3: [("chat", 1, 1), ("judge", 1, 1)],
        }
        retried = page.items[0].calls[0]
        assert [(a.outcome, a.status, a.retry_in_s, a.reason) for a in retried.attempts] == [
            (a.outcome, a.status, a.retry_in_s, a.reason) for a in RETRIED
        ]
        assert (retried.tokens_in, retried.tokens_out, retried.outcome) == (10, 3, "ok")
    finally:
        await engine.dispose()


async def test_bills_are_taken_only_for_prompts_their_batch_has(servers, nc) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    tracker = Tracker(engine, JetStreamPublisher(lambda: nc.jetstream()))
    batch = BatchEvents("b-ledger-" + secrets.token_hex(3), 2)
    later = BatchEvents("b-ledger-" + secrets.token_hex(3))
    try:
        await tracker.write([batch.accepted()])
        screened = [batch.billed(0, 1), batch.billed(1, 2), later.billed(0)]
        assert await tracker.screen(screened) == [
            None,
            Refusal(f"batch {batch.batch_id!r} has 2 prompts: no prompt 2"),
            Refusal(f"batch {later.batch_id!r} not recorded yet", retry=True),
        ]
        tracker.dirty.clear()
        await tracker.write([screened[0]])
        assert batch.batch_id not in tracker.dirty  # a bill changes no progress
    finally:
        await engine.dispose()
