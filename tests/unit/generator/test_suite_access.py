"""Suites are read only from where the generator may read them, and no answer quotes a file
(issue 12, defect 14): no file outside the suite directories is opened, "outside" and "missing"
get the same answer, bundled names match exactly, and errors carry positions, not content."""

import os
from pathlib import Path

import pytest

from contracts.events import BatchRejected
from contracts.inputs import BatchConfig, StartBatchRequested, SuiteRef
from services.generator.logic import plan_batch
from services.generator.suite_loader import SuiteError, builtin_file, count_cases

TOKEN = "PLANTED-SECRET-7f3a9c"


def reason(suite: SuiteRef, dirs: list[Path]) -> str:
    start = StartBatchRequested(batch_id="b-acc", config=BatchConfig(model="m"), suite=suite)
    outcome = plan_batch(start, dirs)
    assert isinstance(outcome, BatchRejected)
    return outcome.reason


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A configured suite directory and, beside it, a directory the generator must not read."""
    allowed, outside = tmp_path / "suites", tmp_path / "private"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "ok.jsonl").write_text('{"prompt": "hi"}\n')
    (outside / "secret.jsonl").write_text(f"{TOKEN} is not JSON\n")
    (outside / "secret.yaml").write_text(f"- prompt: [{TOKEN}\n")
    return allowed, outside


def test_a_path_inside_a_suite_dir_is_read(layout: tuple[Path, Path]) -> None:
    allowed, _ = layout
    assert count_cases(SuiteRef(path="ok.jsonl"), [allowed]) == 1
    assert count_cases(SuiteRef(path=str(allowed / "ok.jsonl")), [allowed]) == 1


def test_paths_outside_get_the_answer_of_a_missing_file(layout: tuple[Path, Path]) -> None:
    allowed, outside = layout
    (allowed / "link.jsonl").symlink_to(outside / "secret.jsonl")
    missing = reason(SuiteRef(path=str(allowed / "secret.jsonl")), [allowed])
    assert "does not exist" in missing
    for given in (
        str(outside / "secret.jsonl"),  # absolute, outside
        "../private/secret.jsonl",  # traversal
        str(allowed / ".." / "private" / "secret.jsonl"),
    ):
        assert reason(SuiteRef(path=given), [allowed]) == missing, given
    link = reason(SuiteRef(path="link.jsonl"), [allowed])  # a symlink out of the directory
    assert link == missing.replace("secret.jsonl", "link.jsonl")
    assert TOKEN not in link


def test_system_files_are_not_an_oracle(layout: tuple[Path, Path]) -> None:
    allowed, _ = layout
    shadow = reason(SuiteRef(path="/etc/shadow"), [allowed])
    nothing = reason(SuiteRef(path="/etc/no-such-file-here"), [allowed])
    assert shadow.replace("shadow", "X") == nothing.replace("no-such-file-here", "X")
    assert "does not exist" in shadow and "line" not in shadow


def test_without_suite_dirs_no_path_is_read(layout: tuple[Path, Path]) -> None:
    allowed, _ = layout
    assert "does not exist" in reason(SuiteRef(path=str(allowed / "ok.jsonl")), [])


@pytest.mark.parametrize(
    "name",
    ["../../private/secret", "/etc/passwd", "customer_support.jsonl", "customer_support/../customer_support", ""],
)
def test_builtin_names_match_the_bundled_list_exactly(name: str) -> None:
    with pytest.raises(SuiteError, match="no bundled suite"):
        builtin_file(name)


def test_builtin_outside_the_bundle_is_not_loaded(layout: tuple[Path, Path]) -> None:
    _, outside = layout
    escape = os.path.relpath(outside / "secret", Path(__file__).parents[3] / "services/generator/suites")
    assert "no bundled suite" in reason(SuiteRef(builtin=escape), [])
    assert "no bundled suite" in reason(SuiteRef(builtin=str(outside / "secret")), [])


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("y1.yaml", f"cases:\n  - prompt: ok\n  - prompt: [{TOKEN}\n", "line"),
        ("y2.yaml", f"cases:\n  - prompt: *{TOKEN}\n", "line"),
        ("y3.yaml", f"cases:\n  - !!python/object:{TOKEN} x\n", "line"),
        ("j1.jsonl", f'{{"prompt": "a"}}\n{{"prompt": {TOKEN}}}\n', "line 2"),
        ("j2.jsonl", f'{{"prompt": "a", "{TOKEN}": 1, "messages": []}}\n', "line 1"),
        ("j3.jsonl", f'{{"prompt": "a", "references": [{{"kind": "{TOKEN}"}}]}}\n', "line 1"),
        ("j4.jsonl", f'{{"messages": [{{"role": "{TOKEN}", "content": "x"}}]}}\n', "line 1"),
    ],
)
def test_rejections_never_quote_the_file(tmp_path: Path, name: str, text: str, where: str) -> None:
    (tmp_path / name).write_text(text)
    why = reason(SuiteRef(path=name), [tmp_path])
    assert TOKEN not in why and where in why, why


def test_yaml_errors_say_where(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(f"cases:\n  - prompt: ok\n  - prompt: [{TOKEN}\n")
    assert "bad.yaml: not valid YAML at line 4, column 1" in reason(SuiteRef(path="bad.yaml"), [tmp_path])


def test_yaml_aliases_are_refused_before_they_multiply(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 20)]
    (tmp_path / "laughs.yaml").write_text("\n".join(lines) + "\ncases:\n  - prompt: hi\n    metadata: {m: *a19}\n")
    why = reason(SuiteRef(path="laughs.yaml"), [tmp_path])
    assert "aliases (*name) are not allowed" in why and "line 2" in why
