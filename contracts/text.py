"""Text that can be stored: every string that may reach PostgreSQL goes through these types.

PostgreSQL's text and JSONB refuse NUL (`invalid byte sequence for encoding "UTF8": 0x00`) and
UTF-8 cannot encode a lone surrogate, so either one would fail a write long after the event was
accepted — and fail every event written beside it. They are refused here, at the contract, so a
bad message is rejected on arrival with a reason instead.

JSON parsed by pydantic already refuses lone surrogates and raw control characters; `\\u0000`
escapes and values built in Python (YAML suites, dicts) reach these checks.
"""

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator

# JSON trees of user data (metadata, evidence): deeper than this is refused (it is never needed,
# and each level costs a frame in every reader that walks it).
MAX_JSON_DEPTH = 32
JSON_INT_MIN, JSON_INT_MAX = -(2**63), 2**64 - 1


def storable(value: str) -> str:
    """`value` unchanged, or ValueError if PostgreSQL could not store it."""
    if "\x00" in value:
        raise ValueError("NUL characters (\\u0000) are not allowed")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone surrogate characters are not allowed") from None
    return value


def storable_json(value: Any, depth: int = 0) -> Any:
    """A JSON-like tree whose every key and string is storable and whose depth is bounded."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        storable(value)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        # The recorder writes JSONB with orjson, which refuses integers beyond 64 bits.
        if not JSON_INT_MIN <= value <= JSON_INT_MAX:
            raise ValueError("integers beyond 64 bits are not allowed")
    elif isinstance(value, float):
        # JSON has no NaN or infinity (1e400 parses as one); orjson would store null.
        if not math.isfinite(value):
            raise ValueError("non-finite numbers (NaN, infinity, 1e400) are not allowed")
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str):
                storable(key)
            storable_json(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            storable_json(item, depth + 1)
    return value


StoredStr = Annotated[str, AfterValidator(storable)]
"""A string with no NUL and no lone surrogate; bounds go in the field beside it:
`name: StoredStr | None = Field(default=None, max_length=200)`."""


JsonObject = Annotated[dict[str, Any], AfterValidator(storable_json)]
"""Free-form user data (case metadata, judge evidence): storable keys and strings, bounded depth."""


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(value: str, limit: int | None = None) -> str:
    """`value` made storable: NUL and lone surrogates replaced by U+FFFD, then clipped to `limit`.

    For text a service takes from outside and must keep rather than refuse (a model's answer,
    an error message quoting one); events themselves refuse such text (StoredStr)."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = _SURROGATE.sub("\ufffd", value)
    return value if limit is None or len(value) <= limit else value[:limit]
