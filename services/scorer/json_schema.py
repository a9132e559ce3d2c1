"""Where a JSON value breaks a JSON schema: the `jsonschema` library, every draft it knows (the
one `$schema` names; 2020-12 when none is named), bounded against hostile schemas and answers.

- Time: every keyword checks the answer's `Deadline` before it runs, so a schema whose `anyOf`
  and `$ref` make validation exponential, or a huge answer, ends as a timeout, not a stuck scorer.
- Patterns: `jsonschema` matches `pattern` and `patternProperties` (also inside
  `unevaluatedProperties`) with the stdlib `re`, which cannot be interrupted and holds the GIL.
  Its keyword modules get a stand-in `re` whose `search` runs the pattern, compiled within the
  bounds of `contracts.references.compile_pattern`, by the `regex` engine under the deadline of
  the validation running on this thread (other callers get the stdlib `re` unchanged).
- `additionalProperties` and `uniqueItems` are our own: the library joins every
  `patternProperties` key into one pattern (past the pattern bounds) and compares array items
  pairwise (quadratic in the answer).
- `$ref` resolves inside the schema only (the library fetches nothing by default): another URI
  makes the schema unusable. `format` is an annotation, as the drafts have it by default.
"""

import itertools
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

from jsonschema import _keywords, _legacy_keywords, _utils
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend
from referencing.exceptions import Unresolvable

from contracts.references import compile_pattern, metaschema_problem, schema_draft
from services.scorer.deadline import Deadline, match_pattern

MAX_ERRORS = 50  # errors collected from one answer (the rest are only said to exist)

Keyword = Callable[[Any, Any, Any, dict[str, Any]], Iterable[ValidationError] | None]


class SchemaUnusable(Exception):
    """The schema cannot be applied: invalid for its draft, an unknown draft, an unresolvable
    `$ref`, or references that never end."""


_validating = threading.local()  # .deadline: the one of the validation running on this thread


def _search(pattern: str, text: str) -> bool:
    try:
        compiled = compile_pattern(pattern)
    except ValueError as exc:  # validated when the check was parsed, so only a pattern we did not expect
        raise SchemaUnusable(f"pattern {pattern[:60]!r} {exc}") from None
    return match_pattern(compiled, text, "search", _validating.deadline) is not None


class _BoundedRe:
    """Stands in for `re` in the library's keyword modules (see the module docstring)."""

    def search(self, pattern: str, string: str, flags: int = 0) -> object:
        if getattr(_validating, "deadline", None) is None or flags:
            return re.search(pattern, string, flags)
        return _search(pattern, string) or None

    def __getattr__(self, name: str) -> object:
        return getattr(re, name)


for _module in (_keywords, _utils, _legacy_keywords):
    if not hasattr(_module, "re"):  # fail at import, not silently unbounded, if the library changes
        raise ImportError(f"{_module.__name__} no longer uses `re`: review services.scorer.json_schema")
    _module.re = _BoundedRe()  # type: ignore[attr-defined]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """The library's keyword, matching each `patternProperties` key on its own."""
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in properties and not any(_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        names = ", ".join(repr(each) for each in sorted(extras))
        if patterns:
            verb = "does" if len(extras) == 1 else "do"
            yield ValidationError(
                f"{names} {verb} not match any of the regexes: {', '.join(map(repr, sorted(patterns)))}"
            )
        else:
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed ({names} {verb} unexpected)")


def _unique_items(validator: Any, unique: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    """The library's keyword in linear time: items compared by a hashable identity."""
    if not unique or not validator.is_type(instance, "array"):
        return
    seen: set[Hashable] = set()
    for item in instance:
        identity = _identity(item)
        if identity in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(identity)


def _identity(value: Any) -> Hashable:
    """Equal for equal JSON values: 1 and 1.0 are one number, true is not 1, key order is no matter."""
    if isinstance(value, bool) or value is None:
        return ("literal", value)
    if isinstance(value, int | float):
        return ("number", value)  # 1 == 1.0 and hash(1) == hash(1.0)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, list):
        return ("array", tuple(_identity(v) for v in value))
    return ("object", frozenset((k, _identity(v)) for k, v in value.items()))


def _with_deadline(keyword: Keyword) -> Keyword:
    def checked(validator: Any, value: Any, instance: Any, schema: dict[str, Any]) -> Any:
        _validating.deadline.left()  # PatternTimeout once the answer's time is spent
        return keyword(validator, value, instance, schema)

    return checked


_BOUNDED: dict[object, type[Validator]] = {}  # by draft class; a race only builds one twice


def _bounded(draft: type[Validator]) -> type[Validator]:
    """`draft`'s validator class with the bounds above (not registered: `$schema` still finds `draft`)."""
    if (known := _BOUNDED.get(draft)) is not None:
        return known
    keywords: dict[str, Keyword] = dict(draft.VALIDATORS)
    if "additionalProperties" in keywords:
        keywords["additionalProperties"] = _additional_properties
    if "uniqueItems" in keywords:
        keywords["uniqueItems"] = _unique_items
    bounded: type[Validator] = extend(draft, validators={name: _with_deadline(k) for name, k in keywords.items()})
    return _BOUNDED.setdefault(draft, bounded)


def schema_errors(value: Any, schema: dict[str, Any], deadline: Deadline) -> tuple[list[str], bool]:
    """Where `value` breaks `schema` ("<JSON path>: <message>", at most MAX_ERRORS) and whether
    there are more. Blocking up to the deadline (PatternTimeout past it); SchemaUnusable when
    the schema cannot be applied."""
    problem = metaschema_problem(schema)  # checked when the event was parsed; cached
    if problem:
        raise SchemaUnusable(f"invalid schema: {problem}")
    try:
        validator = _bounded(schema_draft(schema))(schema)
    except ValueError as exc:
        raise SchemaUnusable(str(exc)) from None
    _validating.deadline = deadline
    try:
        errors = list(itertools.islice(validator.iter_errors(value), MAX_ERRORS + 1))
    except Unresolvable as exc:
        raise SchemaUnusable(f"a $ref cannot be resolved inside the schema ({exc})") from None
    except RecursionError:
        raise SchemaUnusable("its references never end, or the answer is nested too deeply for it") from None
    finally:
        _validating.deadline = None
    return [f"{e.json_path}: {_brief(e.message)}" for e in errors[:MAX_ERRORS]], len(errors) > MAX_ERRORS


def _brief(message: str, limit: int = 160) -> str:
    # The library's messages start with the value's repr and end with the reason: keep both ends.
    return message if len(message) <= limit else message[:60] + "…" + message[-(limit - 61) :]
