"""SQL text without a database: statements split by sqlglot's PostgreSQL tokenizer, the one
read-only query screened out of an answer, and whether a query orders its own result."""

import time

import pytest

from services.scorer.sql.text import (
    QueryRejected,
    SqlTextError,
    extract_sql,
    has_top_level_order_by,
    leading_keyword,
    single_query,
    split_statements,
)


def test_split_statements_ignores_semicolons_in_literals_and_comments() -> None:
    assert split_statements("SELECT ';' AS x; -- a; comment\n") == ["SELECT ';' AS x"]
    assert split_statements("SELECT $tag$a;b$tag$, E'it\\'s;', \"we;ird\" /* c; /* nested; */ */") == [
        "SELECT $tag$a;b$tag$, E'it\\'s;', \"we;ird\" /* c; /* nested; */ */"
    ]
    assert split_statements("SELECT 1;; ;") == ["SELECT 1"]
    assert split_statements("SELECT 1; SELECT 2") == ["SELECT 1", "SELECT 2"]
    assert split_statements(" -- nothing\n") == []
    assert split_statements("SELECT 1 -- why;\n; SELECT 2") == ["SELECT 1 -- why;\n", "SELECT 2"]
    assert split_statements("DO $$ BEGIN PERFORM 1; END $$; SELECT 1") == ["DO $$ BEGIN PERFORM 1; END $$", "SELECT 1"]


@pytest.mark.parametrize("sql", ["SELECT 'unterminated", "SELECT 1 /* open", "SELECT $x$ body", 'SELECT "name'])
def test_unterminated_text_cannot_be_split(sql: str) -> None:
    with pytest.raises(SqlTextError, match="cannot be read"):
        split_statements(sql)
    with pytest.raises(QueryRejected) as rejected:
        single_query(sql)
    assert rejected.value.verdict == "invalid_sql"


def test_top_level_order_by() -> None:
    assert has_top_level_order_by("select * from t order by a")
    assert has_top_level_order_by("SELECT a FROM t UNION SELECT b FROM u ORDER BY 1")
    assert has_top_level_order_by("SELECT a FROM t ORDER /* by what */ BY a")
    assert has_top_level_order_by("SELECT a FROM t ORDER\n\tBY a")
    assert not has_top_level_order_by("SELECT * FROM (SELECT a FROM t ORDER BY a) s")
    assert not has_top_level_order_by("SELECT string_agg(a, ',' ORDER BY a) FROM t")
    assert not has_top_level_order_by("SELECT row_number() OVER (ORDER BY a) FROM t")
    assert not has_top_level_order_by("SELECT 'ORDER BY' AS \"order by\" FROM t -- ORDER BY a")
    assert not has_top_level_order_by("SELECT $$ORDER BY$$, t.order FROM t /* ORDER BY */")
    assert not has_top_level_order_by("WITH s AS (SELECT a FROM t ORDER BY a) SELECT * FROM s")


def test_leading_keyword_and_fences() -> None:
    assert leading_keyword("((SELECT 1))") == "SELECT"
    assert leading_keyword("/* x */ -- y\n with a as (select 1) select * from a") == "WITH"
    assert leading_keyword("'text'") is None
    assert leading_keyword('"select" FROM t') is None  # a quoted name, not the keyword
    assert leading_keyword("E'x'") is None
    assert leading_keyword("$1") is None
    assert leading_keyword("start transaction") == "START"
    assert leading_keyword("") is None
    assert extract_sql("```SQL\nSELECT 1\n```") == "SELECT 1\n"
    assert extract_sql("SELECT 1") == "SELECT 1"
    assert extract_sql("```python\nprint(1)\n```\n```sql\nSELECT 2\n```") == "SELECT 2\n"


@pytest.mark.parametrize(
    ("sql", "verdict", "detail"),
    [
        ("UPDATE t SET a = 1", "write_attempt", "UPDATE is not allowed"),
        ("  /* tidy */ (DELETE FROM t)", "write_attempt", "DELETE is not allowed"),
        ("VACUUM t", "write_attempt", "VACUUM is not allowed"),
        ("DO $$ BEGIN END $$", "write_attempt", "DO is not allowed"),
        ("SELECT 1; DROP TABLE t", "invalid_sql", "2 statements"),
        ("EXPLAIN SELECT 1", "invalid_sql", "not a query"),
        ("I would use SELECT 1", "invalid_sql", "not a query"),
        ("", "invalid_sql", "no SQL statement"),
    ],
)
def test_single_query_screens_the_answer(sql: str, verdict: str, detail: str) -> None:
    with pytest.raises(QueryRejected) as rejected:
        single_query(sql)
    assert rejected.value.verdict == verdict and detail in rejected.value.detail


def test_single_query_returns_the_query_without_its_semicolon() -> None:
    assert single_query("  SELECT 1 ; ") == "SELECT 1 "
    assert single_query("TABLE t") == "TABLE t"
    assert single_query("VALUES (1), (2);") == "VALUES (1), (2)"


def test_a_long_answer_is_read_quickly() -> None:
    sql = "SELECT " + ", ".join(f"'{i};'" for i in range(30_000)) + " FROM t ORDER BY 1"
    started = time.monotonic()
    assert split_statements(sql) == [sql] and has_top_level_order_by(sql)
    assert time.monotonic() - started < 5
