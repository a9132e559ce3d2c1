"""Reference checks a test case (or a whole suite) may carry, and the score each one yields.

Pure: pydantic and the standard library only. A check is chosen by its `kind`; unknown fields
are rejected so that a typo in a suite fails when the suite loads, not silently at scoring time.
"""

import math
import re
from typing import Annotated, Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

MAX_VALUE = 200_000
MAX_SQL = 100_000
DATABASE_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"

RegexFlag = Literal["IGNORECASE", "MULTILINE", "DOTALL", "VERBOSE", "ASCII"]
SqlVerdict = Literal["equal", "different", "invalid_sql", "timeout", "write_attempt", "too_many_rows", "error"]
HARD_FAILURES: Final[frozenset[str]] = frozenset({"invalid_sql", "write_attempt"})

# The JSON Schema subset the scorer implements; a schema using anything else is refused when
# the suite loads rather than half-checked.
SCHEMA_TYPES: Final[frozenset[str]] = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
SCHEMA_ANNOTATIONS: Final[frozenset[str]] = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
)
SCHEMA_KEYWORDS: Final[frozenset[str]] = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
    }
)


class ReferenceCheck(BaseModel):
    """Fields every check shares. `weight` 0 reports a check without letting it count."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True, serialize_by_alias=True)

    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    name: str | None = Field(default=None, min_length=1, max_length=100)

    @property
    def label(self) -> str:
        return self.name or str(getattr(self, "kind", type(self).__name__))


class ExactMatch(ReferenceCheck):
    kind: Literal["exact"] = "exact"
    value: str = Field(max_length=MAX_VALUE)


class NormalizedMatch(ReferenceCheck):
    """Equal after casefolding, trimming, collapsing whitespace, dropping end punctuation and quotes."""

    kind: Literal["normalized"] = "normalized"
    value: str = Field(max_length=MAX_VALUE)


class Contains(ReferenceCheck):
    kind: Literal["contains"] = "contains"
    value: str = Field(min_length=1, max_length=MAX_VALUE)
    case_sensitive: bool = False


class Regex(ReferenceCheck):
    kind: Literal["regex"] = "regex"
    pattern: str = Field(min_length=1, max_length=10_000)
    flags: list[RegexFlag] = Field(default_factory=list, max_length=5)
    mode: Literal["search", "fullmatch"] = "search"

    @model_validator(mode="after")
    def _compiles(self) -> Self:
        try:
            self.compiled()
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from None
        return self

    def compiled(self) -> re.Pattern[str]:
        flags = re.NOFLAG
        for name in self.flags:
            flags |= re.RegexFlag[name]
        return re.compile(self.pattern, flags)


class JsonValid(ReferenceCheck):
    kind: Literal["json_valid"] = "json_valid"
    require_object: bool = False
    allow_fence: bool = True  # accept the JSON inside a ```json fenced block


class JsonSchema(ReferenceCheck):
    kind: Literal["json_schema"] = "json_schema"
    schema_: dict[str, Any] = Field(alias="schema")
    allow_fence: bool = True

    @field_validator("schema_")
    @classmethod
    def _supported(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = schema_problems(value, "$")
        if problems:
            raise ValueError("; ".join(problems[:5]))
        return value


class NumericTolerance(ReferenceCheck):
    """The answer's number (the whole answer, or else its first number) within tolerance of `value`."""

    kind: Literal["numeric"] = "numeric"
    value: float = Field(allow_inf_nan=False)
    abs_tol: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    rel_tol: float = Field(default=1e-9, ge=0, allow_inf_nan=False)


class SqlEquivalence(ReferenceCheck):
    """The answer's SQL returns the same result as `expected_sql` on the database settings call `database`."""

    kind: Literal["sql"] = "sql"
    expected_sql: str = Field(min_length=1, max_length=MAX_SQL)
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
REFERENCES: Final[TypeAdapter[list[Reference]]] = TypeAdapter(list[Reference])


def parse_references(data: object) -> list[Reference]:
    """Validate a list of checks from already-decoded JSON (a suite line's `references`)."""
    return REFERENCES.validate_python(data)


class ComponentScore(BaseModel):
    """The outcome of one check on one answer."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    kind: str
    score: float = Field(ge=0, le=1, allow_inf_nan=False)
    passed: bool
    weight: float = Field(ge=0, allow_inf_nan=False)
    detail: str
    verdict: SqlVerdict | None = None

    @property
    def hard_failure(self) -> bool:
        return self.verdict in HARD_FAILURES


def schema_problems(schema: object, path: str) -> list[str]:
    """Why `schema` is outside the supported JSON Schema subset (empty when it is inside)."""
    if isinstance(schema, bool):
        return []
    if not isinstance(schema, dict):
        return [f"{path}: a schema must be an object or a boolean"]
    problems = [
        f"{path}: unsupported keyword {key!r}"
        for key in schema
        if key not in SCHEMA_KEYWORDS and key not in SCHEMA_ANNOTATIONS
    ]
    problems += _type_problems(schema.get("type"), path)
    props = schema.get("properties")
    if props is not None and not isinstance(props, dict):
        problems.append(f"{path}.properties: must be an object")
    elif props is not None:
        for prop, sub in props.items():
            problems += schema_problems(sub, f"{path}.properties.{prop}")
    for key in ("items", "additionalProperties"):
        if key in schema:
            problems += schema_problems(schema[key], f"{path}.{key}")
    required = schema.get("required")
    if required is not None and not (isinstance(required, list) and all(isinstance(r, str) for r in required)):
        problems.append(f"{path}.required: must be a list of strings")
    if "enum" in schema and not isinstance(schema["enum"], list):
        problems.append(f"{path}.enum: must be a list")
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if key in schema and not _is_finite_number(schema[key]):
            problems.append(f"{path}.{key}: must be a number")
    for key in ("minLength", "maxLength", "minItems", "maxItems"):
        if key in schema and not (
            isinstance(schema[key], int) and not isinstance(schema[key], bool) and schema[key] >= 0
        ):
            problems.append(f"{path}.{key}: must be a non-negative integer")
    if "pattern" in schema:
        problems += _pattern_problems(schema["pattern"], path)
    return problems


def _type_problems(value: object, path: str) -> list[str]:
    if value is None:
        return []
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) and n in SCHEMA_TYPES for n in names):
        return [f"{path}.type: must be one of {sorted(SCHEMA_TYPES)} or a list of them"]
    return []


def _pattern_problems(value: object, path: str) -> list[str]:
    if not isinstance(value, str):
        return [f"{path}.pattern: must be a string"]
    try:
        re.compile(value)
    except re.error as exc:
        return [f"{path}.pattern: does not compile: {exc}"]
    return []


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
