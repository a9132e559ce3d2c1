"""Score an answer against a reference check, and combine the checks into one verdict.

Every check here is pure and linear in the answer, except user patterns (a `regex` check, a
schema's patterns), which may backtrack, and JSON schemas, whose `anyOf` and `$ref` may make
checking slow: both run under a `Deadline` shared by one answer's checks and, past it, yield a
`timeout` verdict. The caller runs `check` off the event loop (the `regex` engine releases the
GIL while it matches). The SQL check needs a database and lives in `services.scorer.sql`.
JSON schemas are checked by the `jsonschema` library (`services.scorer.json_schema`).
"""

import json
import math
import re
import unicodedata
from collections.abc import Iterable
from typing import Any, NamedTuple, assert_never

from contracts.references import (
    ComponentScore,
    Contains,
    ExactMatch,
    JsonSchema,
    JsonValid,
    NormalizedMatch,
    NumericTolerance,
    Reference,
    Regex,
    SqlEquivalence,
    SqlVerdict,
)
from services.scorer.deadline import Deadline, PatternTimeout, match_pattern
from services.scorer.json_schema import SchemaUnusable, schema_errors

MAX_DETAIL = 500
# Time for the pattern matching of one answer's checks together (EVALBUS_PATTERN_TIMEOUT_S).
PATTERN_TIMEOUT_S = 1.0
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb\u201e\u201a\u2039\u203a\u300c\u300d\u300e\u300f"
# Applied after NFKC, which turns full-width marks and "…" into ASCII but leaves "。" and "、".
_TRAILING_PUNCTUATION = ".,;:!?\u3002\u3001"
_FENCE_OPENER = re.compile(r"```[ \t]*([\w+-]*)")
# A sign only counts when it does not follow a word ("COVID-19" is 19), and thousands are
# grouped by commas only when every group has three digits ("1,5" is 1, not 15).
_NUMBER = re.compile(
    r"(?:(?<![\w.])[-+\u2212])?(?<![\w.])(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
)
_NON_FINITE = re.compile(r"[-+]?(?:nan|inf|infinity)", re.IGNORECASE)


def check(ref: Reference, answer: str, deadline: Deadline | None = None) -> ComponentScore:
    """Score `answer` against one check; SQL checks go through `services.scorer.sql` instead.

    Blocking (up to the deadline, `PATTERN_TIMEOUT_S` when none is given): call it off the loop."""
    deadline = deadline or Deadline(PATTERN_TIMEOUT_S)
    try:
        return _check(ref, answer, deadline)
    except PatternTimeout:
        return result(
            ref,
            False,
            f"the pattern did not finish within the {deadline.seconds:g}s limit for this answer's patterns",
            verdict="timeout",
        )


def _check(ref: Reference, answer: str, deadline: Deadline) -> ComponentScore:
    match ref:
        case ExactMatch():
            return _exact(ref, answer)
        case NormalizedMatch():
            return _normalized(ref, answer)
        case Contains():
            return _contains(ref, answer)
        case Regex():
            return _regex(ref, answer, deadline)
        case JsonValid():
            return _json_valid(ref, answer)
        case JsonSchema():
            return _json_schema(ref, answer, deadline)
        case NumericTolerance():
            return _numeric(ref, answer)
        case SqlEquivalence():
            raise ValueError("an sql check needs a database: use services.scorer.sql.execution")
        case _:
            assert_never(ref)


def combine(components: list[ComponentScore], pass_threshold: float) -> tuple[float, bool]:
    """The weighted mean score and whether the case passes.

    A case fails below `pass_threshold`, and also whenever a counted check is a hard failure
    (invalid or writing SQL), however well the other checks did. With no counted check there
    is nothing to object: (1.0, True).
    """
    if not 0 <= pass_threshold <= 1:
        raise ValueError(f"pass_threshold must be between 0 and 1, got {pass_threshold}")
    counted = [c for c in components if c.weight > 0]
    if not counted:
        return 1.0, True
    total = math.fsum(c.weight for c in counted)
    # Rounded so that three checks at 0.7 are not judged below a 0.7 threshold by float noise.
    score = min(1.0, round(math.fsum(c.weight * c.score for c in counted) / total, 9))
    return score, score >= pass_threshold and not any(c.hard_failure for c in counted)


def result(
    ref: Reference, passed: bool, detail: str, score: float | None = None, verdict: SqlVerdict | None = None
) -> ComponentScore:
    return ComponentScore(
        name=ref.label,
        kind=ref.kind,
        score=(1.0 if passed else 0.0) if score is None else score,
        passed=passed,
        weight=ref.weight,
        detail=clip(detail),
        verdict=verdict,
    )


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short(value: object, limit: int = 80) -> str:
    # A string is clipped before repr so that a 200 kB answer is not copied whole into a detail.
    if isinstance(value, str) and len(value) > limit:
        value = value[:limit]
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a JSON value nested ~1000 deep; an int too long to print
        text = f"<{json_type(value)}>"
    return clip(text, limit)


# ---- text ------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Casefolded, trimmed, whitespace collapsed, trailing punctuation and surrounding quotes dropped."""
    text = unicodedata.normalize("NFKC", text)
    # Zero-width and other format characters are invisible in a transcript, so they must not decide a match.
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = " ".join(text.casefold().split())
    while True:
        before = text
        text = text.rstrip(_TRAILING_PUNCTUATION).rstrip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
            text = text[1:-1].strip()
        if text == before:
            return text


def extract_fenced(answer: str, languages: Iterable[str]) -> str | None:
    """The content of the first fenced block tagged with one of `languages`, or of an untagged
    fence that is the whole answer; None when there is neither."""
    wanted = {lang.casefold() for lang in languages}
    for language, content in _fences(answer):
        if language.casefold() in wanted:
            return content
    whole = answer.strip()
    if whole.startswith("```"):
        language, start = _fence_opening(whole, 0)
        if start >= 0 and not language:
            end = len(whole) - 3 if whole.endswith("```") and len(whole) - 3 >= start else len(whole)
            return whole[start:end]
    return None


def _fence_opening(text: str, at: int) -> tuple[str, int]:
    """The language tag of the fence opening at `at` and where its content starts (-1: no newline)."""
    opener = _FENCE_OPENER.match(text, at)
    assert opener is not None
    newline = text.find("\n", opener.end())
    return opener.group(1), (newline + 1 if newline >= 0 else -1)


def _fences(text: str) -> Iterable[tuple[str, str]]:
    """(language, content) of each fenced block, in order; linear in the text (plain `str.find`
    scans: a backtracking regex took seconds on an answer made of ``` marks)."""
    at = text.find("```")
    while at >= 0:
        language, start = _fence_opening(text, at)
        if start < 0:
            return  # no newline after this opening, so none after any later one either
        close = text.find("```", start)
        yield language, text[start : len(text) if close < 0 else close]
        if close < 0:
            return
        at = text.find("```", close + 3)


def _exact(ref: ExactMatch, answer: str) -> ComponentScore:
    if answer == ref.value:
        return result(ref, True, "exact match")
    at = next((i for i, (a, b) in enumerate(zip(answer, ref.value, strict=False)) if a != b), None)
    at = min(len(answer), len(ref.value)) if at is None else at
    return result(ref, False, f"differs at character {at} (answer {len(answer)} chars, expected {len(ref.value)})")


def _normalized(ref: NormalizedMatch, answer: str) -> ComponentScore:
    got, want = normalize_text(answer), normalize_text(ref.value)
    if got == want:
        return result(ref, True, "match after normalisation")
    return result(ref, False, f"normalised answer {short(got)} != {short(want)}")


def _contains(ref: Contains, answer: str) -> ComponentScore:
    hay, needle = (answer, ref.value) if ref.case_sensitive else (answer.casefold(), ref.value.casefold())
    at = hay.find(needle)
    if at >= 0:
        return result(ref, True, f"found at character {at}")
    how = "" if ref.case_sensitive else " (ignoring case)"
    return result(ref, False, f"{short(ref.value)} not found{how}")


def _regex(ref: Regex, answer: str, deadline: Deadline) -> ComponentScore:
    found = match_pattern(ref.compiled(), answer, ref.mode, deadline)
    if found:
        return result(ref, True, f"matched {short(found.group(0))} at character {found.start()}")
    return result(ref, False, f"no {ref.mode} for /{clip(ref.pattern, 80)}/")


# ---- numbers ---------------------------------------------------------------------------------


def extract_number(answer: str) -> float | None:
    """The whole answer as a number if it is one (NaN and infinities included), else the first
    number in it ("1,234.5 kg" is 1234.5); None when there is no number."""
    text = answer.strip()
    if _NON_FINITE.fullmatch(text):
        return float(text)
    found = _NUMBER.search(text)
    if found is None:
        return None
    return float(found.group(0).replace(",", "").replace("\u2212", "-"))


def _numeric(ref: NumericTolerance, answer: str) -> ComponentScore:
    got = extract_number(answer)
    if got is None:
        return result(ref, False, "no number in the answer")
    if not math.isfinite(got):
        return result(ref, False, f"the answer's number is {got}, not a finite number")
    ok = math.isclose(got, ref.value, rel_tol=ref.rel_tol, abs_tol=ref.abs_tol)
    tol = f"abs_tol {ref.abs_tol:g}, rel_tol {ref.rel_tol:g}"
    return result(ref, ok, f"found {got:g}, expected {ref.value:g} ({tol})")


# ---- JSON ------------------------------------------------------------------------------------


class _Parsed(NamedTuple):
    ok: bool
    value: Any
    error: str


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(answer: str, allow_fence: bool) -> _Parsed:
    fenced = extract_fenced(answer, ("json",)) if allow_fence else None
    text = (answer if fenced is None else fenced).strip()
    if not text:
        return _Parsed(False, None, "empty answer")
    try:
        return _Parsed(True, json.loads(text, parse_constant=_reject_constant), "")
    except json.JSONDecodeError as exc:
        return _Parsed(False, None, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except (ValueError, RecursionError) as exc:
        return _Parsed(False, None, f"invalid JSON: {exc or 'nested too deeply'}")


def _json_valid(ref: JsonValid, answer: str) -> ComponentScore:
    parsed = parse_json(answer, ref.allow_fence)
    if not parsed.ok:
        return result(ref, False, parsed.error)
    if ref.require_object and not isinstance(parsed.value, dict):
        return result(ref, False, f"valid JSON, but {json_type(parsed.value)}, not an object")
    return result(ref, True, f"valid JSON {json_type(parsed.value)}")


def _json_schema(ref: JsonSchema, answer: str, deadline: Deadline) -> ComponentScore:
    parsed = parse_json(answer, ref.allow_fence)
    if not parsed.ok:
        return result(ref, False, parsed.error)
    try:
        errors, more = schema_errors(parsed.value, ref.schema_, deadline)
    except PatternTimeout:
        limit = f"{deadline.seconds:g}s limit for this answer's patterns and schemas"
        return result(ref, False, f"the schema check did not finish within the {limit}", verdict="timeout")
    except SchemaUnusable as exc:
        return result(ref, False, f"the schema cannot be used: {exc}")
    if not errors:
        return result(ref, True, "matches the schema")
    left = len(errors) + more - 5  # with `more`, at least one past those listed
    tail = f" (+{left} {'or more' if more else 'more'})" if left > 0 else ""
    return result(ref, False, "schema mismatch: " + "; ".join(errors[:5]) + tail)


def json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case _:
            return "object"
