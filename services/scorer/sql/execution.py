"""Is the model's SQL equivalent to the suite's? Both run read-only on a real database and their
result sets are compared.

Each check opens its own connection and closes it at the end: whatever a query leaves behind in
its session (settings, advisory locks, a cancelled command) dies with the connection, so one bad
query cannot affect the next check. Both queries run in one REPEATABLE READ READ ONLY
transaction, so they see the same snapshot, which is always rolled back.

The read-only transaction stops writes, not everything a privileged role can do inside a
SELECT (pg_terminate_backend, set_config, reading server files): point `database` at a role
that can only read the benchmark tables.
"""

import asyncio
import math
from typing import Final

import asyncpg
from asyncpg.exceptions import PostgresError, QueryCanceledError, ReadOnlySQLTransactionError

from contracts.references import ComponentScore, SqlEquivalence, SqlVerdict
from services.scorer.references import clip
from services.scorer.sql.comparison import ResultSet, compare_results, normalize_value
from services.scorer.sql.text import QueryRejected, extract_sql, has_top_level_order_by, single_query

CONNECT_TIMEOUT_S: Final = 10.0
# How long past statement_timeout the client waits before it gives up on the server itself.
CLIENT_GRACE_S: Final = 5.0
# Failures that are the server's or the environment's, not the query's.
INFRA_SQLSTATE_CLASSES: Final = frozenset({"08", "25", "40", "53", "55", "57", "58", "XX", "HV"})


async def sql_equivalence(ref: SqlEquivalence, generated_sql: str, database_url: str) -> ComponentScore:
    """Score the model's answer (SQL, or text with a ```sql block) against `ref.expected_sql`.

    `database_url` is the URL the scorer's settings give for `ref.database` (SQLAlchemy or
    libpq form; its query parameters, e.g. `?search_path=bench`, become session settings).
    """
    try:
        expected = single_query(ref.expected_sql)
    except QueryRejected as exc:
        return sql_verdict(ref, "error", f"the expected query is unusable: {exc.detail}")
    try:
        generated = single_query(extract_sql(generated_sql))
    except QueryRejected as exc:
        return sql_verdict(ref, exc.verdict, exc.detail)
    try:
        conn = await asyncpg.connect(
            asyncpg_dsn(database_url),
            timeout=CONNECT_TIMEOUT_S,
            statement_cache_size=0,
            server_settings={"application_name": "evalbus-sql-check", "default_transaction_read_only": "on"},
        )
    except (OSError, TimeoutError, ValueError, PostgresError, asyncpg.InterfaceError) as exc:
        return sql_verdict(ref, "error", f"cannot connect to database {ref.database!r}: {type(exc).__name__}: {exc}")
    try:
        return await _compare(conn, ref, expected, generated)
    except (OSError, TimeoutError, PostgresError, asyncpg.InterfaceError) as exc:
        return sql_verdict(ref, "error", f"database {ref.database!r} failed: {type(exc).__name__}: {exc}")
    finally:
        await _close(conn)


def asyncpg_dsn(url: str) -> str:
    """`postgresql+asyncpg://…` (SQLAlchemy) as the `postgresql://…` asyncpg accepts."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0].lower()
    if not sep or base not in ("postgresql", "postgres"):
        raise ValueError("not a postgresql:// URL")
    return f"{base}://{rest}"


async def _compare(
    conn: asyncpg.Connection, ref: SqlEquivalence, expected_sql: str, generated_sql: str
) -> ComponentScore:
    # REPEATABLE READ: both queries read one snapshot, so concurrent writes cannot tell them apart.
    await conn.execute("BEGIN TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        await conn.execute(f"SET LOCAL statement_timeout = {max(1, math.ceil(ref.timeout_s * 1000))}")
        try:
            expected = await _run(conn, ref, expected_sql)
        except QueryRejected as exc:
            return sql_verdict(ref, "error", f"the expected query failed ({exc.verdict}): {exc.detail}")
        try:
            generated = await _run(conn, ref, generated_sql)
        except QueryRejected as exc:
            return sql_verdict(ref, exc.verdict, exc.detail)
    finally:
        await _rollback(conn)
    ordered = ref.ordered if ref.ordered is not None else has_top_level_order_by(expected_sql)
    equal, detail = compare_results(expected, generated, ordered=ordered, compare_names=ref.compare_column_names)
    return sql_verdict(ref, "equal" if equal else "different", detail)


async def _run(conn: asyncpg.Connection, ref: SqlEquivalence, sql: str) -> ResultSet:
    """Run one query for at most `max_rows + 1` rows; every failure becomes QueryRejected."""
    try:
        async with asyncio.timeout(ref.timeout_s + CLIENT_GRACE_S):
            statement = await conn.prepare(sql)
            if statement.get_parameters():
                raise QueryRejected("invalid_sql", "the query has $n parameters and no values for them")
            columns = tuple(attr.name for attr in statement.get_attributes())
            cursor = await statement.cursor()
            records = await cursor.fetch(ref.max_rows + 1)
    except QueryRejected:
        raise
    except Exception as exc:
        raise QueryRejected(*_classify(exc, ref)) from exc
    if len(records) > ref.max_rows:
        raise QueryRejected("too_many_rows", f"more than {ref.max_rows} rows")
    return ResultSet(columns, [tuple(normalize_value(v) for v in record) for record in records])


def _classify(exc: Exception, ref: SqlEquivalence) -> tuple[SqlVerdict, str]:
    if isinstance(exc, QueryCanceledError):
        return "timeout", f"cancelled by the {ref.timeout_s:g}s statement timeout"
    if isinstance(exc, TimeoutError):
        return "timeout", f"no answer from the server within {ref.timeout_s + CLIENT_GRACE_S:g}s"
    if isinstance(exc, ReadOnlySQLTransactionError):
        return "write_attempt", f"the query tried to write: {exc}"
    if isinstance(exc, PostgresError):
        state = exc.sqlstate or ""
        if state[:2] in INFRA_SQLSTATE_CLASSES:
            return "error", f"database error {state}: {exc}"
        return "invalid_sql", f"{state} {type(exc).__name__}: {exc}"
    return "error", f"{type(exc).__name__}: {exc}"


async def _rollback(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.execute("ROLLBACK"), CLIENT_GRACE_S)
    except Exception:
        # A connection that cannot even roll back is closed by the caller; nothing to save here.
        conn.terminate()


async def _close(conn: asyncpg.Connection) -> None:
    if conn.is_closed():
        return
    try:
        await conn.close(timeout=CLIENT_GRACE_S)
    except Exception:
        conn.terminate()


def sql_verdict(ref: SqlEquivalence, verdict: SqlVerdict, detail: str) -> ComponentScore:
    equal = verdict == "equal"
    return ComponentScore(
        name=ref.label,
        kind=ref.kind,
        score=1.0 if equal else 0.0,
        passed=equal,
        weight=ref.weight,
        detail=clip(detail),
        verdict=verdict,
    )
