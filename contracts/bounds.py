"""The bounds of every contract field, and the bounded field types built from them.

Every event is untrusted input and most of it reaches PostgreSQL: every string is a StoredStr
(no NUL, no lone surrogate), every free-form dict a bounded JsonObject, and every field has a
bound — strings and lists a length, integers the range of the column they land in, floats a
finite range — so a bad event is refused on arrival with a reason, not by the database later.
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Final

import orjson
from pydantic import AfterValidator, AwareDatetime, Field

from contracts.text import JsonObject

CRITERION_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
MAX_TEXT = 200_000
MAX_ANSWER = 1_000_000  # a model's answer: max_tokens goes up to 131k tokens
MAX_NAME = 200  # model names, session and experiment tags, ids
MAX_ERROR = 4000
MAX_RAW_OUTPUT = 8000
MAX_MESSAGES = 200
MAX_CRITERIA = 20
# Case metadata: keys at the top level, and bytes as JSON.
MAX_METADATA_KEYS = 100
MAX_METADATA_SIZE = 100_000
# PostgreSQL column ranges: `integer` (indexes, token counts), `smallint` (attempts, batch sizes),
# `bigint` (sums over a batch).
INT_MAX: Final = 2**31 - 1
SMALLINT_MAX: Final = 2**15 - 1
BIGINT_MAX: Final = 2**63 - 1
MAX_USD = 1e15


def _bounded_metadata(value: dict[str, Any]) -> dict[str, Any]:
    # Measured as the recorder will store it (orjson, as its JSONB serializer): C speed, one pass.
    try:
        size = len(orjson.dumps(value)) if value else 0
    except TypeError as exc:  # (JsonObject has refused what orjson cannot write; kept a ValueError anyway)
        raise ValueError(f"metadata cannot be stored as JSON: {exc}") from None
    if size > MAX_METADATA_SIZE:
        raise ValueError(f"metadata larger than {MAX_METADATA_SIZE} bytes as JSON")
    return value


def _sane_time(value: datetime) -> datetime:
    # Stored as timestamptz; far years with an offset would overflow converting to UTC.
    if not 1970 <= value.year <= 9000:
        raise ValueError("a time between the years 1970 and 9000 is expected")
    return value


def utcnow() -> datetime:
    return datetime.now(UTC)


Timestamp = Annotated[AwareDatetime, AfterValidator(_sane_time)]
"""A time with its zone (a naive one would be read in whatever zone the reader runs in)."""
Metadata = Annotated[JsonObject, Field(max_length=MAX_METADATA_KEYS), AfterValidator(_bounded_metadata)]
"""A case's free-form metadata: storable, at most 32 levels, 100 keys, 100 kB as JSON."""
Count = Annotated[int, Field(ge=0, le=INT_MAX)]
Usd = Annotated[float, Field(ge=0, le=MAX_USD, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
