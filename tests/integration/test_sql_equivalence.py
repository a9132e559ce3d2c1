"""SQL equivalence against a real PostgreSQL: a benchmark schema of our own, read-only checks,
one verdict per failure mode, and nothing a query does survives its check."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from contracts.references import SqlEquivalence
from services.scorer.sql.execution import asyncpg_dsn, sql_equivalence

pytestmark = pytest.mark.integration

SCHEMA_SQL = """
CREATE TABLE {s}.customers (id int PRIMARY KEY, name text NOT NULL, country text NOT NULL, joined date NOT NULL);
CREATE TABLE {s}.orders (
    id int PRIMARY KEY,
    customer_id int NOT NULL REFERENCES {s}.customers (id),
    amount numeric(10, 2) NOT NULL
);
INSERT INTO {s}.customers VALUES
    (1, 'Ada', 'UK', '2024-01-05'), (2, 'Bob', 'US', '2024-02-10'),
    (3, 'Chen', 'CN', '2024-03-15'), (4, 'Dana', 'US', '2024-04-20');
INSERT INTO {s}.orders VALUES (1, 1, 10.50), (2, 1, 20.00), (3, 2, 5.25), (4, 3, 99.99), (5, 3, 0.01);
CREATE SEQUENCE {s}.ticket_seq;
"""
SNAPSHOT_SQL = "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders), (SELECT string_agg(name, ',' ORDER BY id) FROM customers), (SELECT is_called FROM ticket_seq)"


@dataclass(frozen=True)
class Bench:
    schema: str
    url: str  # the database URL with the benchmark schema as search_path

    def ref(self, expected_sql: str, **options: object) -> SqlEquivalence:
        return SqlEquivalence.model_validate({"expected_sql": expected_sql, "database": "bench", **options})

    async def verdict(self, expected_sql: str, answer: str, **options: object) -> str | None:
        return (await sql_equivalence(self.ref(expected_sql, **options), answer, self.url)).verdict

    async def snapshot(self) -> asyncpg.Record:
        conn = await asyncpg.connect(asyncpg_dsn(self.url))
        try:
            return await conn.fetchrow(SNAPSHOT_SQL)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def bench(servers) -> AsyncIterator[Bench]:  # type: ignore[no-untyped-def]
    schema = f"bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        await admin.execute(SCHEMA_SQL.format(s=schema))
        joiner = "&" if "?" in servers.database_url else "?"
        yield Bench(schema, f"{servers.database_url}{joiner}search_path={schema}")
    finally:
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


# ---- verdicts --------------------------------------------------------------------------------


async def test_a_join_and_a_subquery_are_equal(bench: Bench) -> None:
    expected = "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id"
    out = await sql_equivalence(
        bench.ref(expected, name="buyers"),
        "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders)",
        bench.url,
    )
    assert (out.verdict, out.passed, out.score, out.name, out.kind) == ("equal", True, 1.0, "buyers", "sql")
    assert out.detail == "same 3 rows, order ignored"


async def test_numbers_and_dates_are_compared_by_value(bench: Bench) -> None:
    totals = "SELECT customer_id, sum(amount) FROM orders GROUP BY customer_id"
    as_float = "SELECT customer_id, sum(amount::float8) FROM orders GROUP BY customer_id"
    assert await bench.verdict(totals, as_float) == "equal"
    assert await bench.verdict("SELECT count(*) FROM orders", "SELECT 5.000::numeric") == "equal"
    assert await bench.verdict("SELECT 1.0 / 3", "SELECT 1::float8 / 3") == "equal"
    assert await bench.verdict("SELECT joined FROM customers", "SELECT joined::text FROM customers") == "equal"
    assert await bench.verdict("SELECT 1", "SELECT '1'") == "different"
    assert await bench.verdict("SELECT true", "SELECT 1") == "different"
    assert await bench.verdict("SELECT 0.1", "SELECT 0.1000001") == "different"


async def test_different_results(bench: Bench) -> None:
    out = await sql_equivalence(
        bench.ref("SELECT name FROM customers WHERE country = 'US'"),
        "SELECT name FROM customers WHERE country = 'UK'",
        bench.url,
    )
    assert (out.verdict, out.passed, out.score) == ("different", False, 0.0)
    assert out.detail == "1 row, expected 2; 2 missing, e.g. ('Bob'); 1 unexpected, e.g. ('Ada')"
    duplicates = await bench.verdict("SELECT country FROM customers", "SELECT DISTINCT country FROM customers")
    assert duplicates == "different"  # a multiset, not a set


async def test_order_matters_only_when_the_expected_query_orders(bench: Bench) -> None:
    ordered = "SELECT name FROM customers ORDER BY name DESC"
    out = await sql_equivalence(bench.ref(ordered), "SELECT name FROM customers ORDER BY name", bench.url)
    assert out.verdict == "different" and "same rows in a different order" in out.detail
    assert await bench.verdict(ordered, "SELECT name FROM customers") == "different"
    assert await bench.verdict(ordered, "SELECT name FROM customers ORDER BY 1 DESC") == "equal"
    assert await bench.verdict(ordered, "SELECT name FROM customers", ordered=False) == "equal"
    unordered = "SELECT name FROM customers"
    assert await bench.verdict(unordered, "SELECT name FROM customers ORDER BY name DESC") == "equal"
    assert await bench.verdict(unordered, "SELECT name FROM customers ORDER BY id DESC", ordered=True) == "different"
    # An ORDER BY inside a window or a subquery does not order the result.
    windowed = "SELECT name, row_number() OVER (ORDER BY id) FROM customers"
    assert (
        await bench.verdict(windowed, "SELECT name, row_number() OVER (ORDER BY id) FROM customers ORDER BY id DESC")
        == "equal"
    )


async def test_invalid_sql(bench: Bench) -> None:
    for answer in (
        "SELEC name FROM customers",
        "SELECT * FROM no_such_table",
        "SELECT nme FROM customers",
        "SELECT 1 / 0",
        "SELECT name FROM customers WHERE id = $1",
        "SELECT 'unterminated",
        "SHOW search_path",
        "EXPLAIN SELECT 1",
        "I would use SELECT name FROM customers",
        "",
    ):
        out = await sql_equivalence(bench.ref("SELECT name FROM customers"), answer, bench.url)
        assert (out.verdict, out.passed) == ("invalid_sql", False), answer
    out = await sql_equivalence(bench.ref("SELECT 1"), "SELECT * FROM no_such_table", bench.url)
    assert "42P01" in out.detail and "no_such_table" in out.detail


async def test_writes_are_refused_and_leave_the_data_intact(bench: Bench) -> None:
    before = await bench.snapshot()
    expected = "SELECT name FROM customers"
    for answer in (
        "UPDATE customers SET name = 'x'",
        "DROP TABLE orders",
        "  /* tidy up */ (DELETE FROM orders)",
        "TRUNCATE orders CASCADE",
        "COPY customers TO PROGRAM 'true'",
        "SET statement_timeout = 0",
        "COMMIT",
    ):
        assert await bench.verdict(expected, answer) == "write_attempt", answer
    # These pass the up-front check; the read-only transaction stops them.
    for answer in (
        "WITH gone AS (DELETE FROM orders RETURNING *) SELECT count(*) FROM gone",
        "SELECT * INTO stolen FROM customers",
        "SELECT nextval('ticket_seq')",  # sequences ignore rollback: only read-only mode stops this
        "SELECT name FROM customers FOR UPDATE",
    ):
        assert await bench.verdict(expected, answer) == "write_attempt", answer
    assert await bench.snapshot() == before
    assert await bench.verdict("SELECT 1", "SELECT 1 FROM stolen") == "invalid_sql"  # never created


async def test_a_slow_query_times_out_and_the_next_check_is_unaffected(bench: Bench) -> None:
    started = time.monotonic()
    assert await bench.verdict("SELECT 1", "SELECT 1", timeout_s=0.5) == "equal"
    baseline = time.monotonic() - started  # a check's own cost (connecting, both queries) on this machine
    started = time.monotonic()
    out = await sql_equivalence(bench.ref("SELECT 1", timeout_s=0.5), "SELECT pg_sleep(30)", bench.url)
    assert (out.verdict, out.passed) == ("timeout", False)
    assert "0.5s statement timeout" in out.detail
    assert time.monotonic() - started < baseline + 15  # stopped at its timeout, not after the 30 s sleep
    assert await bench.verdict("SELECT 1", "SELECT 1", timeout_s=0.5) == "equal"


async def test_too_many_rows(bench: Bench) -> None:
    expected = "SELECT generate_series(1, 10)"
    assert await bench.verdict(expected, "SELECT generate_series(1, 10)", max_rows=10) == "equal"
    out = await sql_equivalence(bench.ref(expected, max_rows=10), "SELECT generate_series(1, 10000000)", bench.url)
    assert (out.verdict, out.detail) == ("too_many_rows", "more than 10 rows")


async def test_exactly_one_statement(bench: Bench) -> None:
    before = await bench.snapshot()
    expected = "SELECT name FROM customers"
    assert await bench.verdict(expected, "SELECT 1; SELECT 2") == "invalid_sql"
    assert await bench.verdict(expected, "SELECT name FROM customers; DROP TABLE customers") == "invalid_sql"
    assert await bench.verdict(expected, "SELECT name FROM customers;") == "equal"
    assert await bench.verdict(expected, "SELECT name FROM customers; -- done\n") == "equal"
    assert await bench.verdict(expected, "SELECT name FROM customers WHERE name <> 'a;b'") == "equal"
    assert await bench.snapshot() == before


async def test_column_names_are_ignored_unless_asked_but_column_order_always_counts(bench: Bench) -> None:
    expected = "SELECT id, name FROM customers"
    renamed = "SELECT id AS customer_id, name AS customer_name FROM customers"
    assert await bench.verdict(expected, renamed) == "equal"
    out = await sql_equivalence(bench.ref(expected, compare_column_names=True), renamed, bench.url)
    assert out.verdict == "different" and "column names ['customer_id', 'customer_name']" in out.detail
    assert await bench.verdict(expected, "SELECT c.id, c.name FROM customers c", compare_column_names=True) == "equal"
    assert await bench.verdict(expected, "SELECT name, id FROM customers") == "different"
    out = await sql_equivalence(bench.ref(expected), "SELECT id, name, country FROM customers", bench.url)
    assert (out.verdict, out.detail) == ("different", "3 columns, expected 2")
    empty = "SELECT id, name FROM customers WHERE false"
    assert await bench.verdict(empty, "SELECT id FROM customers WHERE false") == "different"
    assert await bench.verdict(empty, "SELECT 1, 'x' WHERE 1 = 2") == "equal"


async def test_a_broken_expected_query_is_an_error_not_the_models_fault(bench: Bench) -> None:
    for expected in (
        "SELECT * FROM missing_table",
        "SELECT 1; SELECT 2",
        "DELETE FROM orders",
        "SELECT generate_series(1, 100)",  # more rows than max_rows
        "SELECT pg_sleep(2)",
    ):
        out = await sql_equivalence(bench.ref(expected, max_rows=50, timeout_s=0.3), "SELECT 1", bench.url)
        assert (out.verdict, out.passed) == ("error", False), expected
        assert "expected query" in out.detail
    # The expected query runs first, so the model's query is not blamed for the suite's mistake.
    assert await bench.verdict("SELECT * FROM missing_table", "SELECT * FROM also_missing") == "error"
    # An answer refused without running it is judged on its own.
    assert await bench.verdict("SELECT * FROM missing_table", "DROP TABLE orders") == "write_attempt"


async def test_an_unreachable_database_is_an_error(bench: Bench) -> None:
    out = await sql_equivalence(bench.ref("SELECT 1"), "SELECT 1", "postgresql+asyncpg://postgres@127.0.0.1:1/evalbus")
    assert out.verdict == "error" and "cannot connect to database 'bench'" in out.detail
    out = await sql_equivalence(bench.ref("SELECT 1"), "SELECT 1", "mysql://x")
    assert out.verdict == "error"


async def test_the_answer_may_wrap_its_query_in_a_fence(bench: Bench) -> None:
    answer = "Here is the query:\n\n```sql\nSELECT name\nFROM customers\nWHERE country = 'US';\n```\n\nIt lists US customers."
    assert await bench.verdict("SELECT name FROM customers WHERE country = 'US'", answer) == "equal"


async def test_session_state_dies_with_the_check(bench: Bench) -> None:
    # Each would leak into a shared connection: a session-level lock and a session setting.
    await bench.verdict("SELECT 1", "SELECT pg_advisory_lock(4242)")
    assert await bench.verdict("SELECT true", "SELECT pg_try_advisory_lock(4242)") == "equal"
    await bench.verdict("SELECT 1", "SELECT set_config('search_path', 'pg_catalog', false)")
    assert await bench.verdict("SELECT 4", "SELECT count(*) FROM customers") == "equal"


async def test_concurrent_checks_do_not_disturb_each_other(bench: Bench) -> None:
    expected = "SELECT name FROM customers"
    answers = {
        "SELECT name FROM customers ORDER BY name": "equal",
        "SELECT pg_sleep(5)": "timeout",
        "WITH gone AS (DELETE FROM customers RETURNING *) SELECT name FROM gone": "write_attempt",
        "SELECT nam FROM customers": "invalid_sql",
        "SELECT name FROM customers WHERE id < 3": "different",
    }
    ref = bench.ref(expected, timeout_s=0.5)
    outs = await asyncio.gather(*(sql_equivalence(ref, answer, bench.url) for answer in answers))
    assert [o.verdict for o in outs] == list(answers.values())


# ---- URLs ------------------------------------------------------------------------------------


def test_asyncpg_dsn() -> None:
    assert asyncpg_dsn("postgresql+asyncpg://u@h:5/db?search_path=x") == "postgresql://u@h:5/db?search_path=x"
    with pytest.raises(ValueError, match="postgresql"):
        asyncpg_dsn("mysql://u@h/db")


# ---- wired into the scorer -------------------------------------------------------------------


async def test_the_scorer_runs_sql_checks_on_the_named_database_within_its_limit(bench: Bench) -> None:
    from contracts.events import PromptJudged, Usage
    from contracts.inputs import BatchConfig
    from contracts.references import parse_references
    from services.scorer.logic import ReferenceDatabases, score_prompt

    databases = ReferenceDatabases({"bench": bench.url}, limit=2)
    refs = parse_references([{"kind": "sql", "expected_sql": "SELECT 1 FROM pg_sleep(0.3)", "database": "bench"}])
    cfg = BatchConfig(model="m", judge_enabled=False)

    def judged(i: int, answer: str) -> PromptJudged:
        return PromptJudged(
            batch_id="b",
            prompt_id=f"b-{i}",
            index=i,
            judge_model=None,
            judgments=[],
            usage=Usage(),
            answer=answer,
            references=refs,
            config=cfg,
        )

    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        admin = await asyncpg.connect(asyncpg_dsn(bench.url))
        try:
            while not done.is_set():
                n = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'evalbus-sql-check'"
                )
                peak = max(peak, n)
                await asyncio.sleep(0.02)
        finally:
            await admin.close()

    watcher = asyncio.create_task(watch())
    answers = ["```sql\nSELECT 1 FROM pg_sleep(0.3)\n```"] * 5 + ["SELECT 2", "DROP TABLE customers"]
    results = await asyncio.gather(*(score_prompt(judged(i, a), databases.check) for i, a in enumerate(answers)))
    done.set()
    await watcher
    assert [r.components[0].verdict for r in results] == ["equal"] * 5 + ["different", "write_attempt"]
    assert [r.passed for r in results] == [True] * 5 + [False, False]
    assert 1 <= peak <= 2
