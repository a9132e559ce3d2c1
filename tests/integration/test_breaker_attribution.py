"""Breakers attributed to batches, against a real PostgreSQL: two batches running at the same time
on different endpoints, one failing; each one's progress and report show its own endpoints only."""

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.enums import BatchStatus
from contracts.events import BatchAccepted
from contracts.inputs import BatchConfig
from contracts.ops import BreakerStateChanged
from services.recorder import reporting
from services.recorder.parsing import BreakerRow
from services.recorder.repository import record, record_breaker_events
from services.runtime.models.endpoints import Endpoint, Endpoints

pytestmark = pytest.mark.integration


def endpoints(failing: str, healthy: str) -> Endpoints:
    return Endpoints(
        [
            Endpoint(url=healthy, name="default"),
            Endpoint(url=healthy, name="judge"),
            Endpoint(url=failing, name="failing"),
        ]
    )


def change(seq: int, endpoint: str, old: str, new: str, at: datetime, service: str = "chat-runner") -> BreakerRow:
    evt = BreakerStateChanged(service=service, endpoint=endpoint, old_state=old, new_state=new, occurred_at=at)  # type: ignore[arg-type]
    return BreakerRow(seq, evt)


async def test_each_batch_shows_the_breakers_of_its_own_endpoints(servers) -> None:  # type: ignore[no-untyped-def]
    port = 20_000 + secrets.randbelow(20_000)  # endpoints of this test's own
    failing, healthy, other = (f"http://127.0.0.1:{port + i}/v1" for i in range(3))
    eps = endpoints(failing, healthy)
    tag = secrets.token_hex(3)
    sick, well = f"b-sick-{tag}", f"b-well-{tag}"
    start = datetime.now(UTC) - timedelta(minutes=1)
    seq = secrets.randbelow(10**12) + 10**12  # the table's key is the stream sequence: keep clear of others
    engine = create_async_engine(servers.database_url)
    try:
        async with engine.begin() as conn:
            accepted = [
                BatchAccepted(
                    batch_id=sick,
                    config=BatchConfig(model="m", endpoint="failing"),
                    suite_name="s",
                    total_prompts=3,
                    occurred_at=start,
                ),
                BatchAccepted(
                    batch_id=well, config=BatchConfig(model="m"), suite_name="s", total_prompts=3, occurred_at=start
                ),
            ]
            await record(conn, accepted, eps)
            # A forged late `accepted` of the healthy batch naming the failing endpoint adds nothing.
            forged = BatchAccepted(
                batch_id=well, config=BatchConfig(model="m", base_url=failing), suite_name="s", total_prompts=3
            )
            await record(conn, [forged], eps)
            await record_breaker_events(
                conn,
                [
                    change(seq, failing, "closed", "open", start - timedelta(seconds=30)),  # before either ran
                    change(seq + 1, failing, "open", "closed", start - timedelta(seconds=20)),
                    # while both run: the failing endpoint opens twice (spelt with a trailing slash by
                    # the judge), another endpoint once
                    change(seq + 2, failing, "closed", "open", start + timedelta(seconds=5)),
                    change(seq + 3, failing, "open", "half_open", start + timedelta(seconds=6)),
                    change(seq + 4, failing + "/", "closed", "open", start + timedelta(seconds=7), service="judge"),
                    change(seq + 5, failing, "half_open", "open", start + timedelta(seconds=8)),
                    change(seq + 6, other, "closed", "open", start + timedelta(seconds=9)),
                ],
            )
        async with engine.connect() as conn:
            keys = await conn.execute(
                text("SELECT batch_id, endpoint_key FROM batch_endpoints WHERE batch_id IN (:a, :b) ORDER BY 1"),
                {"a": sick, "b": well},
            )
            assert [tuple(r) for r in keys] == [(sick, failing), (well, healthy)]
            sick_progress = await reporting.progress(conn, sick)
            well_progress = await reporting.progress(conn, well)
            assert sick_progress is not None and well_progress is not None
            assert sick_progress.breakers_open == [failing, failing + "/"]  # each service's breaker, as it names it
            assert well_progress.breakers_open == []
            sick_report = await reporting.report(conn, sick, BatchStatus.FAILED)
            well_report = await reporting.report(conn, well, BatchStatus.COMPLETED)
        assert sick_report is not None and well_report is not None
        assert sick_report.breaker_openings == 3  # the three in its window, of its endpoint only
        assert well_report.breaker_openings == 0
        async with engine.begin() as conn:  # the failing endpoint's breakers close: nothing open any more
            later = start + timedelta(seconds=20)
            await record_breaker_events(
                conn,
                [
                    change(seq + 7, failing, "open", "closed", later),
                    change(seq + 8, failing, "open", "closed", later, service="judge"),
                ],
            )
            sick_progress = await reporting.progress(conn, sick)
        assert sick_progress is not None and sick_progress.breakers_open == []
    finally:
        await engine.dispose()
