"""Reading suites: JSONL (streamed line by line, never held whole) and YAML.

A JSONL line is one case: `prompt` or chat `messages`, optional `expected`, optional
`metadata`, optional `references` (checks the scorer runs, see contracts/references.py). A YAML
suite is a list of cases, or a mapping with `name`, `description`, `cases` and `references`
(checks every case gets, after its own).

The generator reads files only from where it was told it may (rule 9 of DESIGN.md): bundled
suites by exact name, paths inside its configured suite directories (symlinks resolved first),
and uploads it downloaded itself. A path outside those directories gets the same answer as a
path that does not exist, and no error message quotes a file's content: a rejection travels to
whoever sent the start, who need not be who wrote the file.
"""

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import orjson
import yaml
from pydantic import ValidationError

from contracts.inputs import Case, SuiteRef
from contracts.references import parse_references

BUILTIN_DIR = Path(__file__).parent / "suites"
SUFFIXES = (".jsonl", ".yaml", ".yml")
YAML_SUFFIXES = (".yaml", ".yml")
# Parts of a validation message that are safe to show: field names and other short identifiers.
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class SuiteError(ValueError):
    """The suite cannot be used; the message says where and why, never what the file holds."""


@dataclass(frozen=True)
class SuiteFile:
    """A suite file the generator may read; `label` is what messages call it (never a server path)."""

    path: Path
    label: str

    @property
    def is_yaml(self) -> bool:
        return self.path.suffix.lower() in YAML_SUFFIXES

    @classmethod
    def local(cls, path: Path) -> "SuiteFile":
        """A file the caller chose itself (the CLI reading the user's own suite)."""
        return cls(path=path, label=path.name)


def builtin_names() -> list[str]:
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.stem for p in BUILTIN_DIR.iterdir() if p.suffix in SUFFIXES)


def builtin_file(name: str) -> SuiteFile:
    """A bundled suite by exact name: nothing but the names builtin_names() lists is ever opened."""
    if name in builtin_names():
        for suffix in SUFFIXES:
            candidate = BUILTIN_DIR / f"{name}{suffix}"
            if candidate.is_file():
                return SuiteFile(path=candidate, label=name)
    raise SuiteError(f"no bundled suite named {_shown(name)!r} (have: {', '.join(builtin_names())})")


def file_in_dirs(given: str, dirs: Sequence[Path]) -> SuiteFile:
    """The suite file `given` names inside one of `dirs` (relative to each in turn, or absolute);
    resolved with symlinks followed, then checked to be inside the directory."""
    label = _shown(PurePath(given).name or "suite")
    missing = SuiteError(f"suite file {label!r} does not exist in the generator's suite directories")
    if "\x00" in given or PurePath(given).suffix.lower() not in SUFFIXES:
        raise missing
    for directory in dirs:
        try:
            base = directory.resolve(strict=True)
            candidate = (base / given).resolve()  # an absolute `given` stays itself
            if candidate.is_relative_to(base) and candidate.is_file():
                return SuiteFile(path=candidate, label=label)
        except (OSError, RuntimeError, ValueError):  # a missing dir, a symlink loop, an odd name
            continue
    raise missing


def locate(suite: SuiteRef, dirs: Sequence[Path] = ()) -> SuiteFile | None:
    """The file a suite reads from (None: inline cases). An upload is downloaded by the caller."""
    if suite.cases is not None:
        return None
    if suite.builtin is not None:
        return builtin_file(suite.builtin)
    if suite.path is not None:
        return file_in_dirs(suite.path, dirs)
    raise SuiteError("an uploaded suite is read from its download")


def _shown(text: str, limit: int = 100) -> str:
    return text[:limit]


def _redacted(message: str) -> str:
    """A message with every quoted part that is not a plain identifier replaced by '…'."""

    def keep(found: re.Match[str]) -> str:
        inner = found[0][1:-1]
        return found[0] if _IDENTIFIER.fullmatch(inner) else "'…'"

    return _QUOTED.sub(keep, message)[:300]


def _case_error(where: str, exc: ValidationError | ValueError) -> SuiteError:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(p) if isinstance(p, int) or _IDENTIFIER.fullmatch(str(p)) else "…" for p in first["loc"])
        message = _redacted(first["msg"])
        detail = f"{loc}: {message}" if loc else message
    else:
        detail = _redacted(str(exc))
    return SuiteError(f"{where}: {detail}")


def _jsonl_cases(suite: SuiteFile) -> Iterator[Case]:
    with suite.path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                # The position only: orjson's message may carry the offending text.
                raise SuiteError(f"{suite.label} line {lineno}: not JSON (column {exc.colno})") from None
            if not isinstance(data, dict):
                raise SuiteError(f"{suite.label} line {lineno}: a case must be a JSON object")
            try:
                yield Case.model_validate(data)
            except ValidationError as exc:
                raise _case_error(f"{suite.label} line {lineno}", exc) from None


class _AliasInSuite(yaml.MarkedYAMLError):
    pass


class _SuiteYamlLoader(yaml.SafeLoader):
    """Safe YAML without aliases: `*name` repeats a node without copying it, so a few kB of nested
    aliases ("billion laughs") make validation walk billions of nodes."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            raise _AliasInSuite(problem="alias", problem_mark=self.peek_event().start_mark)
        return super().compose_node(parent, index)  # type: ignore[no-any-return, arg-type]


def _load_yaml(suite: SuiteFile) -> object:
    try:
        return yaml.load(suite.path.read_text(encoding="utf-8"), Loader=_SuiteYamlLoader)  # a SafeLoader
    except _AliasInSuite as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SuiteError(f"{suite.label}: YAML aliases (*name) are not allowed in a suite{where}") from None
    except yaml.MarkedYAMLError as exc:
        # PyYAML's message quotes the offending line: keep only where it is.
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SuiteError(f"{suite.label}: not valid YAML{where}") from None
    except yaml.YAMLError:
        raise SuiteError(f"{suite.label}: not valid YAML") from None
    except RecursionError:
        raise SuiteError(f"{suite.label}: not valid YAML (nested too deeply)") from None


def _yaml_cases(suite: SuiteFile) -> Iterator[Case]:
    doc = _load_yaml(suite)
    items = doc.get("cases") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise SuiteError(f"{suite.label}: expected a list of cases or a mapping with 'cases'")
    try:
        shared = parse_references(doc.get("references") or []) if isinstance(doc, dict) else []
    except ValidationError as exc:
        raise _case_error(f"{suite.label} suite references", exc) from None
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise SuiteError(f"{suite.label} case {number}: a case must be a mapping")
        try:
            case = Case.model_validate(item)
        except ValidationError as exc:
            raise _case_error(f"{suite.label} case {number}", exc) from None
        yield case.model_copy(update={"references": [*case.references, *shared]}) if shared else case


def file_cases(suite: SuiteFile) -> Iterator[Case]:
    """Every case of a suite file in order; raises SuiteError at the first unusable one."""
    try:
        if suite.is_yaml:
            yield from _yaml_cases(suite)
        else:
            yield from _jsonl_cases(suite)
    except (OSError, UnicodeDecodeError):
        raise SuiteError(f"suite file {suite.label!r} cannot be read") from None


def iter_cases(suite: SuiteRef, dirs: Sequence[Path] = (), file: SuiteFile | None = None) -> Iterator[Case]:
    """Every case of the suite in order (from `file` when given: an upload's download)."""
    if suite.cases is not None:
        yield from suite.cases
        return
    source = file or locate(suite, dirs)
    assert source is not None
    yield from file_cases(source)


def count_cases(suite: SuiteRef, dirs: Sequence[Path] = (), file: SuiteFile | None = None) -> int:
    """Validate the whole suite in one streaming pass; returns how many cases it has."""
    return sum(1 for _ in iter_cases(suite, dirs, file))
