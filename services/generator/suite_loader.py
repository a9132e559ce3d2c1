"""Reading suites: JSONL (streamed line by line, never held whole) and YAML.

A JSONL line is one case: `prompt` or chat `messages`, optional `expected`, optional
`metadata`, optional `references` (checks the scorer runs, see contracts/references.py). A YAML
suite is a list of cases, or a mapping with `name`, `description`, `cases` and `references`
(checks every case gets, after its own).
"""

from collections.abc import Iterator
from pathlib import Path

import orjson
import yaml
from pydantic import ValidationError

from contracts.events import Case, SuiteRef
from contracts.references import parse_references

BUILTIN_DIR = Path(__file__).parent / "suites"
SUFFIXES = (".jsonl", ".yaml", ".yml")


class SuiteError(ValueError):
    """The suite cannot be used; the message says where and why."""


def builtin_names() -> list[str]:
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.stem for p in BUILTIN_DIR.iterdir() if p.suffix in SUFFIXES)


def resolve_path(suite: SuiteRef) -> Path | None:
    if suite.builtin is not None:
        for suffix in SUFFIXES:
            candidate = BUILTIN_DIR / f"{suite.builtin}{suffix}"
            if candidate.exists():
                return candidate
        raise SuiteError(f"no bundled suite named {suite.builtin!r} (have: {', '.join(builtin_names())})")
    if suite.path is not None:
        return Path(suite.path)
    return None


def _case_error(where: str, exc: ValidationError | ValueError) -> SuiteError:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        detail = f"{loc}: {first['msg']}" if loc else first["msg"]
    else:
        detail = str(exc)
    return SuiteError(f"{where}: {detail}")


def _jsonl_cases(path: Path) -> Iterator[Case]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise SuiteError(f"{path.name} line {lineno}: not JSON ({exc})") from exc
            if not isinstance(data, dict):
                raise SuiteError(f"{path.name} line {lineno}: a case must be a JSON object")
            try:
                yield Case.model_validate(data)
            except ValidationError as exc:
                raise _case_error(f"{path.name} line {lineno}", exc) from exc


def _yaml_cases(path: Path) -> Iterator[Case]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SuiteError(f"{path.name}: not valid YAML ({exc})") from exc
    items = doc.get("cases") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise SuiteError(f"{path.name}: expected a list of cases or a mapping with 'cases'")
    try:
        shared = parse_references(doc.get("references") or []) if isinstance(doc, dict) else []
    except ValidationError as exc:
        raise _case_error(f"{path.name} suite references", exc) from exc
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise SuiteError(f"{path.name} case {number}: a case must be a mapping")
        try:
            case = Case.model_validate(item)
        except ValidationError as exc:
            raise _case_error(f"{path.name} case {number}", exc) from exc
        yield case.model_copy(update={"references": [*case.references, *shared]}) if shared else case


def iter_cases(suite: SuiteRef) -> Iterator[Case]:
    """Every case of the suite in order; raises SuiteError at the first unusable one."""
    if suite.cases is not None:
        yield from suite.cases
        return
    path = resolve_path(suite)
    assert path is not None
    if not path.is_file():
        raise SuiteError(f"suite file {str(path)!r} does not exist or is not a file")
    try:
        if path.suffix in (".yaml", ".yml"):
            yield from _yaml_cases(path)
        else:
            yield from _jsonl_cases(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"suite file {str(path)!r} cannot be read: {exc}") from exc


def count_cases(suite: SuiteRef) -> int:
    """Validate the whole suite in one streaming pass; returns how many cases it has."""
    return sum(1 for _ in iter_cases(suite))
