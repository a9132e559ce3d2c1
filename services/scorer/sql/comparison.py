"""Comparing two queries' result sets: values in a normal form (numbers to 9 significant digits,
times as text, 1, '1' and true distinct), rows in order or as multisets, and a sentence saying
how they differ."""

import datetime as dt
import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass
from decimal import Context, Decimal

import asyncpg

from services.scorer.references import clip

_SIGNIFICANT = Context(prec=9)
_EXACT_FLOAT_LIMIT = 2**53


@dataclass(frozen=True)
class ResultSet:
    """A query's column names and its rows, each value in `normalize_value` form."""

    columns: tuple[str, ...]
    rows: list[tuple[Hashable, ...]]


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
