"""SQL text, before any database sees it: the model's SQL out of its answer, split into
statements and screened down to one read-only query; whether a query orders its own result.

Statements are read by `sqlglot`'s PostgreSQL tokenizer, so that a `;` or an ORDER BY inside a
string, a dollar-quoted body, a quoted identifier or a (nested) comment is not read as SQL.
"""

import re
from typing import Final

from sqlglot.dialects.postgres import Postgres
from sqlglot.tokens import Token, TokenType

from contracts.references import SqlVerdict
from services.scorer.references import clip, extract_fenced

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
# Tokens whose text is a value or a quoted name, never a keyword, whatever it spells.
_LITERALS: Final = frozenset(
    {
        TokenType.STRING, TokenType.NUMBER, TokenType.IDENTIFIER, TokenType.HEREDOC_STRING, TokenType.BYTE_STRING,
        TokenType.BIT_STRING, TokenType.HEX_STRING, TokenType.NATIONAL_STRING, TokenType.UNICODE_STRING,
        TokenType.RAW_STRING,
    }
)  # fmt: skip
_WORD = re.compile(r"[^\W\d][\w$]*")
_DIALECT: Final = Postgres()


class SqlTextError(ValueError):
    """The text cannot be split into statements (an unterminated string or comment)."""


class QueryRejected(Exception):
    """The SQL gets `verdict` without being compared (or its run failed that way)."""

    def __init__(self, verdict: SqlVerdict, detail: str) -> None:
        super().__init__(detail)
        self.verdict: SqlVerdict = verdict
        self.detail = detail


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


def split_statements(sql: str) -> list[str]:
    """The non-empty statements of `sql`, split at `;` outside strings, identifiers and comments
    (each from its first token to its `;`, comments before that `;` included)."""
    statements: list[str] = []
    start: int | None = None
    for token in _tokens(sql):
        if token.token_type == TokenType.SEMICOLON:
            if start is not None:
                statements.append(sql[start : token.start])
            start = None
        elif start is None:
            start = token.start
    if start is not None:
        statements.append(sql[start:])
    return statements


def leading_keyword(statement: str) -> str | None:
    """The statement's first word, upper-cased, looking through opening parentheses."""
    for token in _tokens(statement):
        if token.token_type != TokenType.L_PAREN:
            if token.token_type in _LITERALS:
                return None
            word = _WORD.match(statement, token.start)  # a keyword of two words ("ORDER BY"): the first
            return word.group(0).upper() if word else None
    return None


def has_top_level_order_by(statement: str) -> bool:
    """Whether the statement's own result is sorted: ORDER BY outside any parentheses."""
    depth, previous = 0, ""
    for token in _tokens(statement):
        kind = token.token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and kind not in _LITERALS:
            word = token.text.upper()
            # One token when only spaces part the words; two when a comment does.
            if kind == TokenType.ORDER_BY or (previous == "ORDER" and word == "BY"):
                return True
            previous = word
            continue
        previous = ""
    return False


def _tokens(sql: str) -> list[Token]:
    try:
        return _DIALECT.tokenize(sql)
    except Exception as exc:  # TokenError, or the tokenizer failing otherwise: either way unreadable
        raise SqlTextError(f"the SQL cannot be read: {clip(str(exc), 120)}") from None
