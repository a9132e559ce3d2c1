"""How the CLI sends a suite: inline when small and valid, a bundled name, else uploaded (never a
path the services would have to read)."""

from pathlib import Path

import pytest

from contracts.inputs import SuiteRef
from evalbus.cli.run import INLINE_LIMIT_BYTES, suite_source


def test_small_valid_suite_goes_inline(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    ref = suite_source(str(path))
    assert isinstance(ref, SuiteRef) and ref.cases is not None and len(ref.cases) == 2 and ref.name == "s.jsonl"


def test_bundled_name_goes_by_name() -> None:
    assert suite_source("customer_support") == SuiteRef(builtin="customer_support")


@pytest.mark.parametrize("text", ['{"prompt": 42}\n', '{"prompt": "' + "x" * INLINE_LIMIT_BYTES + '"}\n'])
def test_large_or_invalid_suites_are_uploaded(tmp_path: Path, text: str) -> None:
    path = tmp_path / "big.jsonl"
    path.write_text(text)
    assert suite_source(str(path)) == path


def test_a_missing_file_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        suite_source(str(tmp_path / "nope.jsonl"))
