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
import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from decimal import Context, Decimal
from typing import Final

import asyncpg
from asyncpg.exceptions import PostgresError, QueryCanceledError, ReadOnlySQLTransactionError

from contracts.references import ComponentScore, SqlEquivalence, SqlVerdict
from services.scorer.references import clip, extract_fenced

CONNECT_TIMEOUT_S: Final = 10.0
# How long past statement_timeout the client waits before it gives up on the server itself.
CLIENT_GRACE_S: Final = 5.0
SQL_FENCE_LANGUAGES: Final = ("sql", "postgresql", "postgres", "pgsql", "psql")
QUERY_KEYWORDS: Final = frozenset({"SELECT", "WITH", "VALUES", "TABLE"})
# Statements that change data, schema, session or transaction state. Most would also be stopped
# by the read-only transaction, but naming them up front gives the right verdict without running
# anything, and covers the ones it does not stop (SET, COMMIT, COPY TO PROGRAM, ...).
WRITE_KEYWORDS: Final = frozenset(
    {
        "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE", "DROP", "CREATE", "ALTER", "TRUNCATE",
        "RENAME", "GRANT", "REVOKE", "COMMENT", "SECURITY", "REASSIGN", "IMPORT", "COPY", "LOAD", "CALL", "DO",
        "EXECUTE", "PREPARE", "DEALLOCATE", "SET", "RESET", "DISCARD", "BEGIN", "START", "COMMIT", "END",
        "ROLLBACK", "ABORT", "SAVEPOINT", "RELEASE", "LOCK", "VACUUM", "ANALYZE", "ANALYSE", "CLUSTER",
        "REINDEX", "REFRESH", "CHECKPOINT", "LISTEN", "NOTIFY", "UNLISTEN",
    }
)  # fmt: skip
# Failures that are the server's or the environment's, not the query's.
INFRA_SQLSTATE_CLASSES: Final = frozenset({"08", "25", "40", "53", "55", "57", "58", "XX", "HV"})

_DOLLAR_QUOTE = re.compile(r"\$(?:[^\W\d]\w*)?\$")
_WORD = re.compile(r"[^\W\d][\w$]*")
_NUMERIC_LITERAL = re.compile(r"(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_SIGNIFICANT = Context(prec=9)
_EXACT_FLOAT_LIMIT = 2**53


class SqlTextError(ValueError):
    """The text cannot be split into statements (an unterminated string or comment)."""


class QueryRejected(Exception):
    def __init__(self, verdict: SqlVerdict, detail: str) -> None:
        super().__init__(detail)
        self.verdict: SqlVerdict = verdict
        self.detail = detail


@dataclass(frozen=True)
class ResultSet:
    columns: tuple[str, ...]
    rows: list[tuple[Hashable, ...]]


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


def extract_sql(answer: str) -> str:
    """The content of the answer's ```sql block if it has one, else the whole answer."""
    fenced = extract_fenced(answer, SQL_FENCE_LANGUAGES)
    return answer if fenced is None else fenced


def single_query(sql: str) -> str:
    """The one read-only query in `sql` (a trailing `;` allowed), or QueryRejected saying why not."""
    try:
        statements = split_statements(sql)
    except SqlTextError as exc:
        raise QueryRejected("invalid_sql", str(exc)) from None
    if not statements:
        raise QueryRejected("invalid_sql", "no SQL statement")
    if len(statements) > 1:
        raise QueryRejected("invalid_sql", f"{len(statements)} statements: exactly one query is allowed")
    statement = statements[0]
    word = leading_keyword(statement)
    if word in WRITE_KEYWORDS:
        raise QueryRejected("write_attempt", f"{word} is not allowed: the check is read-only")
    if word not in QUERY_KEYWORDS:
        raise QueryRejected("invalid_sql", f"not a query (starts with {clip(statement.strip(), 40)!r})")
    return statement


# ---- SQL text --------------------------------------------------------------------------------


def split_statements(sql: str) -> list[str]:
    """The non-empty statements of `sql`, split at `;` outside strings, identifiers and comments."""
    statements: list[str] = []
    start: int | None = None
    for token, at in _tokens(sql):
        if token == ";":
            if start is not None:
                statements.append(sql[start:at])
            start = None
        elif start is None:
            start = at
    if start is not None:
        statements.append(sql[start:])
    return statements


def leading_keyword(statement: str) -> str | None:
    """The statement's first word, upper-cased, looking through opening parentheses."""
    for token, _ in _tokens(statement):
        if token != "(":
            return token if _WORD.fullmatch(token) else None
    return None


def has_top_level_order_by(statement: str) -> bool:
    """Whether the statement's own result is sorted: ORDER BY outside any parentheses."""
    depth, previous = 0, ""
    for token, _ in _tokens(statement):
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        elif depth == 0 and previous == "ORDER" and token == "BY":
            return True
        previous = token
    return False


def _tokens(sql: str) -> Iterator[tuple[str, int]]:
    """Words (upper-cased) and punctuation with their offsets; literals, quoted identifiers and
    comments are skipped or stood in for, so that nothing inside them is read as SQL."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif sql.startswith("/*", i):
            i = _end_of_block_comment(sql, i)
        elif c == "'":
            yield "<string>", i
            i = _end_of_quoted(sql, i, "'", backslash=False)
        elif c == '"':
            yield "<identifier>", i
            i = _end_of_quoted(sql, i, '"', backslash=False)
        elif c == "$" and (tag := _DOLLAR_QUOTE.match(sql, i)):
            close = sql.find(tag.group(0), tag.end())
            if close < 0:
                raise SqlTextError("unterminated dollar-quoted string")
            yield "<string>", i
            i = close + len(tag.group(0))
        elif word := _WORD.match(sql, i):
            i = word.end()
            prefix = word.group(0).upper()
            if prefix in ("E", "B", "X", "N") and i < n and sql[i] == "'":
                yield "<string>", word.start()
                i = _end_of_quoted(sql, i, "'", backslash=prefix == "E")
            else:
                yield prefix, word.start()
        elif number := _NUMERIC_LITERAL.match(sql, i):
            yield "<number>", i
            i = number.end()
        else:
            yield c, i
            i += 1


def _end_of_quoted(sql: str, start: int, quote: str, *, backslash: bool) -> int:
    i, n = start + 1, len(sql)
    while i < n:
        c = sql[i]
        if backslash and c == "\\":
            i += 2
        elif c != quote:
            i += 1
        elif i + 1 < n and sql[i + 1] == quote:
            i += 2
        else:
            return i + 1
    raise SqlTextError("unterminated string" if quote == "'" else "unterminated quoted identifier")


def _end_of_block_comment(sql: str, start: int) -> int:
    depth, i, n = 0, start, len(sql)
    while i < n:
        if sql.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif sql.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    raise SqlTextError("unterminated /* comment")


# ---- running ---------------------------------------------------------------------------------


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


# ---- comparing -------------------------------------------------------------------------------


def compare_results(expected: ResultSet, got: ResultSet, *, ordered: bool, compare_names: bool) -> tuple[bool, str]:
    """Whether `got` equals `expected` and a sentence saying how they compare."""
    if len(got.columns) != len(expected.columns):
        return False, f"{len(got.columns)} columns, expected {len(expected.columns)}"
    if compare_names and got.columns != expected.columns:
        return False, f"column names {list(got.columns)}, expected {list(expected.columns)}"
    how = "in the same order" if ordered else "order ignored"
    if ordered and got.rows == expected.rows:
        return True, f"same {_rows(len(got.rows))}, {how}"
    want, have = Counter(expected.rows), Counter(got.rows)
    if want == have:
        if not ordered:
            return True, f"same {_rows(len(got.rows))}, {how}"
        at = next(i for i, (a, b) in enumerate(zip(got.rows, expected.rows, strict=True)) if a != b)
        return False, f"same rows in a different order (first difference at row {at}); the expected query is ordered"
    missing, unexpected = want - have, have - want
    parts = [f"{_rows(len(got.rows))}, expected {len(expected.rows)}"]
    if missing:
        parts.append(f"{missing.total()} missing, e.g. {show_row(next(iter(missing)))}")
    if unexpected:
        parts.append(f"{unexpected.total()} unexpected, e.g. {show_row(next(iter(unexpected)))}")
    return False, "; ".join(parts)


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


def normalize_value(value: object) -> Hashable:
    """A comparable, hashable form: numbers to 9 significant digits (integers exact), times as ISO
    text, arrays and composites as tuples. Tagged so that 1, '1' and true stay distinct."""
    match value:
        case None:
            return None
        case bool():
            return ("b", value)
        case int() | float() | Decimal():
            return ("n", _number(value))
        case str():
            return ("s", value)
        case dt.datetime() | dt.date() | dt.time():
            return ("s", value.isoformat())
        case bytes() | bytearray() | memoryview():
            return ("x", bytes(value).hex())
        case list() | tuple() | asyncpg.Record():
            return ("a", tuple(normalize_value(v) for v in value))
        case _:
            return ("s", str(value))


def _number(value: int | float | Decimal) -> int | Decimal | str:
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if value.is_integer() and abs(value) < _EXACT_FLOAT_LIMIT:
            return int(value)
    elif not value.is_finite():
        return "NaN" if value.is_nan() else ("Infinity" if value > 0 else "-Infinity")
    elif value == value.to_integral_value():
        return int(value)
    # Equal Decimals and ints hash alike, so a rounded 3.000000000 meets the integer 3.
    return _SIGNIFICANT.create_decimal(value).normalize(_SIGNIFICANT)


def show_row(row: tuple[Hashable, ...]) -> str:
    return clip("(" + ", ".join(_show(v) for v in row) + ")", 160)


def _show(value: Hashable) -> str:
    if value is None:
        return "NULL"
    if not isinstance(value, tuple):
        return str(value)
    tag, inner = value
    if tag == "a":
        return "{" + ", ".join(_show(v) for v in inner) + "}"
    if tag == "b":
        return "true" if inner else "false"
    return repr(inner) if tag == "s" else str(inner)
