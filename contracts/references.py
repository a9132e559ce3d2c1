"""Reference checks a test case (or a whole suite) may carry, and the score each one yields.

Pure: pydantic, the standard library, the `regex` engine and `jsonschema` only. A check is chosen by its
`kind`; unknown fields are rejected so that a typo in a suite fails when the suite loads, not
silently at scoring time.

Patterns (a `regex` check's, and a JSON schema's `pattern` keywords and `patternProperties` keys) are user input that every
service parses: each is compiled once, here, and whatever goes wrong in compiling it (a syntax
error, groups nested deep enough to exhaust the parser's recursion, repeat counts that would take
the compiler seconds or gigabytes) is a validation error with a reason, never an exception later.
They must be valid Python `re` syntax and are compiled by `regex` (its re-compatible VERSION0),
whose matching takes a timeout and releases the GIL: the scorer bounds every match in time.
"""

import functools
import json
import operator
import re
import re._constants as _sre_constants
import re._parser as _sre_parser
from collections.abc import Iterator
from typing import Annotated, Any, Final, Literal, Self, cast

import regex
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from pydantic import ConfigDict, Field, TypeAdapter, field_validator, model_validator

from contracts.base import Strict, Wire
from contracts.text import JsonObject, StoredStr

MAX_VALUE = 200_000
MAX_REFERENCES = 20  # checks in one list: a case's, a suite's shared ones, a batch's
MAX_SQL = 100_000
# Compiling costs a few microseconds per character on the loop of every service that parses
# the event (once per distinct pattern, then cached): bounded so that one event stays cheap.
MAX_PATTERN = 500
MAX_SCHEMA_PATTERN_CHARS = 1_000  # all the patterns of one JSON schema together
# Groups nested deeper than this are refused before any parser recurses into them.
MAX_PATTERN_NESTING = 50
# The compiled program's size, counting each repeat's minimum as that many copies (the `regex`
# compiler unrolls them: `(?:a{1000}){1000}` takes it half a second, `{10000}` minutes).
MAX_PATTERN_SIZE = 10_000
MAX_SCHEMA_KEYS = 2_000  # keywords and properties in one JSON schema, all levels together
DATABASE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"

RegexFlag = Literal["IGNORECASE", "MULTILINE", "DOTALL", "VERBOSE", "ASCII"]
SqlVerdict = Literal["equal", "different", "invalid_sql", "timeout", "write_attempt", "too_many_rows", "error"]
HARD_FAILURES: Final[frozenset[str]] = frozenset({"invalid_sql", "write_attempt"})
MAX_DETAIL = 1_000  # a component's detail (the scorer clips its own at 500)

# A JSON schema without `$schema` is read as this draft; with one, as the draft it names.
DEFAULT_SCHEMA_DRAFT: Final[type[Validator]] = Draft202012Validator


class ReferenceCheck(Strict):
    """Fields every check shares. `weight` 0 reports a check without letting it count."""

    # JsonSchema's `schema` field is `schema_` in Python (BaseModel has a `schema` method).
    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    weight: float = Field(default=1.0, ge=0, le=1_000_000, allow_inf_nan=False)
    name: StoredStr | None = Field(default=None, min_length=1, max_length=100)

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "kind", type(self).__name__))


class ExactMatch(ReferenceCheck):
    kind: Literal["exact"] = "exact"
    value: StoredStr = Field(max_length=MAX_VALUE)


class NormalizedMatch(ReferenceCheck):
    """Equal after casefolding, trimming, collapsing whitespace, dropping end punctuation and quotes."""

    kind: Literal["normalized"] = "normalized"
    value: StoredStr = Field(max_length=MAX_VALUE)


class Contains(ReferenceCheck):
    kind: Literal["contains"] = "contains"
    value: StoredStr = Field(min_length=1, max_length=MAX_VALUE)
    case_sensitive: bool = False


class Regex(ReferenceCheck):
    kind: Literal["regex"] = "regex"
    pattern: StoredStr = Field(min_length=1, max_length=MAX_PATTERN)
    flags: list[RegexFlag] = Field(default_factory=list, max_length=5)
    mode: Literal["search", "fullmatch"] = "search"

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        try:
            compile_pattern(self.pattern, tuple(self.flags))
        except ValueError as exc:
            raise ValueError(f"pattern {exc}") from None
        return self

    def compiled(self) -> "regex.Pattern[str]":
        """The pattern compiled at validation (match it with a `timeout=`: it may backtrack).

        From `compile_pattern`'s cache; were it evicted, compiling the validated pattern again
        gives the same result (the bounds make compiling deterministic), so this never raises."""
        return compile_pattern(self.pattern, tuple(self.flags))


class JsonValid(ReferenceCheck):
    kind: Literal["json_valid"] = "json_valid"
    require_object: bool = False
    allow_fence: bool = True  # accept the JSON inside a ```json fenced block


class JsonSchema(ReferenceCheck):
    kind: Literal["json_schema"] = "json_schema"
    schema_: JsonObject = Field(alias="schema")
    allow_fence: bool = True

    @field_validator("schema_")
    @classmethod
    def _valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        if _schema_size(value) > MAX_SCHEMA_KEYS:
            raise ValueError(f"more than {MAX_SCHEMA_KEYS} keywords and properties")
        patterns = list(_schema_patterns(value))
        if sum(len(p) for _, p in patterns) > MAX_SCHEMA_PATTERN_CHARS:
            raise ValueError(f"its patterns have more than {MAX_SCHEMA_PATTERN_CHARS} characters together")
        # Every pattern is compiled (bounded) before the draft's metaschema sees it: that check
        # compiles them too, with the stdlib `re` and no bounds.
        problems = [problem for path, source in patterns for problem in _pattern_problems(source, path)]
        if problems:
            raise ValueError("; ".join(problems[:5]))
        problem = metaschema_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def pattern(self, source: str) -> "regex.Pattern[str]":
        """A pattern of this schema, compiled at validation (by `_pattern_problems`)."""
        return compile_pattern(source)


class NumericTolerance(ReferenceCheck):
    """The answer's number (the whole answer, or else its first number) within tolerance of `value`."""

    kind: Literal["numeric"] = "numeric"
    value: float = Field(allow_inf_nan=False)
    abs_tol: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    rel_tol: float = Field(default=1e-9, ge=0, le=1e9, allow_inf_nan=False)


class SqlEquivalence(ReferenceCheck):
    """The answer's SQL returns the same result as `expected_sql` on the database settings call `database`."""

    kind: Literal["sql"] = "sql"
    expected_sql: StoredStr = Field(min_length=1, max_length=MAX_SQL)
    # A name, resolved to a URL by the scorer's settings, so that no credential travels in an event.
    database: str = Field(pattern=DATABASE_NAME_PATTERN)
    ordered: bool | None = None  # None: ordered iff the expected query has a top-level ORDER BY
    compare_column_names: bool = False
    timeout_s: float = Field(default=5.0, gt=0, le=300, allow_inf_nan=False)
    max_rows: int = Field(default=10_000, ge=1, le=1_000_000)


Reference = Annotated[
    ExactMatch | NormalizedMatch | Contains | Regex | JsonValid | JsonSchema | NumericTolerance | SqlEquivalence,
    Field(discriminator="kind"),
]
# A list of checks as a suite gives it (a case's, or a YAML suite's shared list).
REFERENCES: Final[TypeAdapter[list[Reference]]] = TypeAdapter(
    Annotated[list[Reference], Field(max_length=MAX_REFERENCES)]
)


def parse_references(data: object) -> list[Reference]:
    """Validate a list of checks from already-decoded JSON (a suite line's `references`)."""
    return REFERENCES.validate_python(data)


class ComponentScore(Wire):
    """The outcome of one check on one answer."""

    name: StoredStr = Field(max_length=100)
    kind: StoredStr = Field(max_length=40)
    score: float = Field(ge=0, le=1, allow_inf_nan=False)
    passed: bool
    weight: float = Field(ge=0, le=1_000_000, allow_inf_nan=False)
    detail: StoredStr = Field(max_length=MAX_DETAIL)
    verdict: SqlVerdict | None = None

    @property
    def hard_failure(self) -> bool:
        return self.verdict in HARD_FAILURES


def schema_draft(schema: dict[str, Any]) -> type[Validator]:
    """The `jsonschema` validator class of the draft `schema` names in `$schema` (2020-12 when it
    names none), or ValueError when it names one `jsonschema` does not know."""
    if "$schema" not in schema:
        return DEFAULT_SCHEMA_DRAFT
    uri = schema["$schema"]
    if not isinstance(uri, str):
        raise ValueError("$schema: must be a string")
    found = validator_for(schema, default=cast(type[Validator], _UNKNOWN_DRAFT))
    if found is _UNKNOWN_DRAFT:
        raise ValueError(f"$schema: {uri[:100]!r} is not a JSON Schema draft the scorer knows")
    return found


_UNKNOWN_DRAFT = object()  # what `validator_for` answers for a `$schema` it does not know


@functools.lru_cache(maxsize=256)  # the same schema arrives in every event of a batch
def _cached_metaschema_problem(canonical: str) -> str | None:
    schema = json.loads(canonical)
    try:
        draft = schema_draft(schema)
    except ValueError as exc:
        return str(exc)
    try:
        draft.check_schema(schema)
    except SchemaError as exc:
        return f"{exc.json_path}: {_clip(exc.message, 300)}"
    return None


def metaschema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid schema of its draft (None when it is one)."""
    return _cached_metaschema_problem(json.dumps(schema, sort_keys=True, allow_nan=False))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pattern_problems(value: str, path: str) -> list[str]:
    try:
        compile_pattern(value)
    except ValueError as exc:
        return [f"{path}: {exc}"]
    return []


def _schema_patterns(value: object, path: str = "$") -> Iterator[tuple[str, str]]:
    """(where, pattern) of every string `pattern` keyword and `patternProperties` key anywhere in
    the tree (checked before any is compiled)."""
    if isinstance(value, dict):
        if isinstance(value.get("pattern"), str):
            yield f"{path}.pattern", value["pattern"]
        if isinstance(value.get("patternProperties"), dict):
            for key in value["patternProperties"]:
                yield f"{path}.patternProperties[{key[:60]!r}]", key
        for key, item in value.items():
            yield from _schema_patterns(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _schema_patterns(item, f"{path}[{i}]")


def _schema_size(value: object) -> int:
    """Keys of every object in the tree (depth is already bounded by JsonObject)."""
    if isinstance(value, dict):
        return len(value) + sum(_schema_size(v) for v in value.values())
    if isinstance(value, list):
        return sum(_schema_size(v) for v in value)
    return 0


# ---- patterns ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)  # a pattern at the size bound takes ~1 MB compiled
def compile_pattern(source: str, flag_names: tuple[RegexFlag, ...] = ()) -> "regex.Pattern[str]":
    """`source` compiled by `regex` (re-compatible VERSION0), or ValueError saying why it cannot be.

    Cached: the same patterns arrive in every event of a batch. Patterns are immutable and safe
    to share between threads.
    """
    # By name: the two engines give ASCII different bits.
    flags = functools.reduce(operator.or_, (int(re.RegexFlag[name]) for name in flag_names), 0)
    regex_flags = functools.reduce(operator.or_, (int(getattr(regex, name)) for name in flag_names), 0)
    if len(source) > MAX_PATTERN:
        raise ValueError(f"is longer than {MAX_PATTERN} characters")
    if source.count("(") > MAX_PATTERN_NESTING and _nesting(source) > MAX_PATTERN_NESTING:
        raise ValueError(f"nests groups deeper than {MAX_PATTERN_NESTING} levels")
    try:
        tree = _sre_parser.parse(source, flags)
    except re.error as exc:
        raise ValueError(f"does not compile: {exc}") from None
    except Exception as exc:  # the stdlib parser failing in any other way is still a bad pattern
        raise ValueError(f"does not compile ({type(exc).__name__})") from None
    if _program_size(tree) > MAX_PATTERN_SIZE:
        raise ValueError(f"is too large once its repeats are expanded (more than {MAX_PATTERN_SIZE} elements)")
    try:
        return regex.compile(source, regex_flags | regex.VERSION0, cache_pattern=False)  # cached above
    except regex.error as exc:
        raise ValueError(f"does not compile: {exc}") from None
    except Exception as exc:  # RecursionError, OverflowError, MemoryError...: refused, never raised later
        raise ValueError(f"does not compile ({type(exc).__name__})") from None


def _nesting(source: str) -> int:
    """How deep `(` nest outside character classes and escapes (an upper bound is enough)."""
    depth = deepest = 0
    i, n, in_class = 0, len(source), False
    while i < n:
        c = source[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if source.startswith("]", i + 1) or source.startswith("^]", i + 1):
                i += 2 if source[i + 1] == "]" else 3
                continue
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(0, depth - 1)
        i += 1
    return deepest


def _program_size(tree: object) -> int:
    """Elements of the parsed pattern, each repeat counted as its minimum number of copies."""
    size = 0
    for op, av in tree:  # type: ignore[attr-defined]
        if op in (_sre_constants.MAX_REPEAT, _sre_constants.MIN_REPEAT, _sre_constants.POSSESSIVE_REPEAT):
            low, _, sub = av
            size += max(1, low) * _program_size(sub)
        else:
            size += 1 + sum(_program_size(sub) for sub in _subpatterns(av))
        if size > MAX_PATTERN_SIZE:
            return size  # enough to refuse it; products can grow past any bound
    return size


def _subpatterns(av: object) -> list[object]:
    if isinstance(av, _sre_parser.SubPattern):
        return [av]
    if isinstance(av, list | tuple):
        return [sub for item in av for sub in _subpatterns(item)]
    return []
