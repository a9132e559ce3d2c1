"""A benchmark suite through the whole stack: reference checks and SQL result equivalence on a
database the scorer's settings name, weighted verdicts with their components, the judge's
batching figures and the quality report at completion."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import nats
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.events import BatchCompleted
from contracts.inputs import BatchConfig, StartBatchRequested
from evalbus.client import publish_start, upload_suite
from evalbus.stack import Stack
from services.scorer.sql.execution import asyncpg_dsn

pytestmark = pytest.mark.e2e

SUITE = """
name: shop-sql
references:
  - {kind: regex, pattern: "(?i)select", name: mentions_select, weight: 0}
cases:
  - prompt: "Names of customers who ordered.\\n```sql\\nSELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders)\\n```"
    references:
      - {kind: sql, name: orders_sql, database: shop, expected_sql: "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id"}
    metadata: {difficulty: easy, topic: joins}
  - prompt: "Customers by name.\\n```sql\\nSELECT name FROM customers ORDER BY name DESC\\n```"
    references:
      - {kind: sql, name: orders_sql, database: shop, expected_sql: "SELECT name FROM customers ORDER BY name"}
    metadata: {difficulty: medium, topic: ordering}
  - prompt: "Clean up.\\n```sql\\nDELETE FROM orders\\n```"
    references:
      - {kind: sql, name: orders_sql, database: shop, expected_sql: "SELECT count(*) FROM orders"}
    metadata: {difficulty: hard, topic: safety}
  - prompt: "Broken.\\n```sql\\nSELEC name FROM customers\\n```"
    references:
      - {kind: sql, name: orders_sql, database: shop, expected_sql: "SELECT name FROM customers"}
    metadata: {difficulty: hard, topic: syntax}
  - prompt: "My order VL-1 about billing arrived damaged, what can I do?"
    references:
      - {kind: contains, value: "order"}
    metadata: {difficulty: easy, topic: billing}
"""


@pytest.fixture(scope="module")
def shop_url(servers) -> Iterator[str]:  # type: ignore[no-untyped-def]
    schema = f"shop_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(asyncpg_dsn(servers.database_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(
        run(
            f"CREATE SCHEMA {schema};"
            f"CREATE TABLE {schema}.customers (id int PRIMARY KEY, name text NOT NULL);"
            f"CREATE TABLE {schema}.orders (id int PRIMARY KEY, customer_id int NOT NULL);"
            f"INSERT INTO {schema}.customers VALUES (1, 'Ada'), (2, 'Bob'), (3, 'Chen');"
            f"INSERT INTO {schema}.orders VALUES (1, 1), (2, 1), (3, 3);"
        )
    )
    joiner = "&" if "?" in servers.database_url else "?"
    try:
        yield f"{servers.database_url}{joiner}search_path={schema}"
    finally:
        asyncio.run(run(f"DROP SCHEMA {schema} CASCADE"))


@pytest.fixture(scope="module")
def scoring_stack(servers, shop_url: str) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    st = Stack(servers.data_dir / "e2e-scoring", nats_url=servers.nats_url, database_url=servers.database_url)
    st.start_fake_model({"latency_ms": "5"})
    st.start_services(extra_env={"EVALBUS_REFERENCE_DATABASES": orjson.dumps({"shop": shop_url}).decode()})
    st.wait_healthy()
    try:
        yield st
    finally:
        st.stop()


async def completed(nc: nats.NATS, batch_id: str, within_s: float = 120) -> BatchCompleted:
    js = nc.jetstream()
    deadline = time.monotonic() + within_s
    while True:
        try:
            msg = await js.get_last_msg(subjects.STREAM_EVENTS, subjects.batch_event(batch_id, "batch", "completed"))
            return BatchCompleted.model_validate_json(msg.data)
        except nats.js.errors.NotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture
async def nc(scoring_stack: Stack) -> AsyncIterator[nats.NATS]:
    conn = await nats.connect(scoring_stack.nats_url)
    yield conn
    await conn.drain()


async def test_a_benchmark_suite_is_scored_by_references_sql_and_the_judge(
    scoring_stack: Stack, nc: nats.NATS, tmp_path: Path
) -> None:
    suite = tmp_path / "shop.yaml"
    suite.write_text(SUITE)
    batch_id = "b-bench-" + secrets.token_hex(3)
    config = BatchConfig(
        model="evalbus-fake",
        judge_model="evalbus-fake-judge",
        criteria=["accuracy", "clarity"],
        judge_weight=0,  # reported, not counted: the verdicts below depend on the references only
        judge_batch_size=3,
        concurrency=8,
    )
    uploaded = await upload_suite(nc, batch_id, suite)
    await publish_start(nc, StartBatchRequested(batch_id=batch_id, config=config, suite=uploaded))
    done = await completed(nc, batch_id)
    rep = done.report
    assert (rep.total, rep.completed, rep.failed) == (5, 5, 0)

    engine = create_async_engine(scoring_stack.database_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT p.idx, s.passed, s.components FROM scores s JOIN prompts p USING (prompt_id)"
                        " WHERE s.batch_id = :b ORDER BY p.idx"
                    ),
                    {"b": batch_id},
                )
            ).all()
            stored = (
                await conn.execute(
                    text("SELECT rating, report FROM quality_reports WHERE batch_id = :b"), {"b": batch_id}
                )
            ).one()
    finally:
        await engine.dispose()
    verdicts = [next(c.get("verdict") for c in comps if c["kind"] in ("sql", "contains")) for _, _, comps in rows]
    assert verdicts == ["equal", "different", "write_attempt", "invalid_sql", None]
    assert [passed for _, passed, _ in rows] == [True, False, False, False, True], rows
    assert rep.passed == 2
    for _, _, comps in rows:  # every component is stored with its score; the judge's weight is 0
        assert comps[0]["kind"] == "judge" and comps[0]["weight"] == 0
        assert all(0 <= c["score"] <= 1 and c["detail"] for c in comps)
        assert comps[-1]["name"] == "mentions_select"  # the suite-wide check comes after the case's own

    by_name = {c.name: c for c in rep.components}
    assert by_name["orders_sql"].verdicts == {"different": 1, "equal": 1, "invalid_sql": 1, "write_attempt": 1}
    assert by_name["judge"].evaluated == 5 and by_name["mentions_select"].passed == 2
    # 5 answers in chunks of at most 3: at most 3 judge calls (fewer than 5 unless a chunk fell back)
    assert rep.judge_fallbacks == 0 and rep.judge_calls <= 3 and rep.judge_calls_saved >= 2

    assert done.quality is not None and stored.rating == done.quality.rating
    assert stored.report["samples"] == 5 and done.quality.samples == 5
    assert done.quality.distributions["difficulty"] == {"easy": 2, "hard": 2, "medium": 1}
    assert set(done.quality.judge_averages) == {"accuracy", "clarity"}
