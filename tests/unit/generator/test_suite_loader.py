from pathlib import Path

import pytest

from contracts.events import BatchRejected
from contracts.inputs import BatchConfig, Case, StartBatchRequested, SuiteRef
from services.generator.logic import plan_batch, with_defaults
from services.generator.suite_loader import SuiteError, builtin_names, count_cases, iter_cases


def write(tmp_path: Path, name: str, text: str) -> SuiteRef:
    path = tmp_path / name
    path.write_text(text)
    return SuiteRef(path=str(path))


def test_jsonl_suite_streams_cases_and_skips_blank_lines(tmp_path: Path) -> None:
    suite = write(
        tmp_path,
        "s.jsonl",
        '{"prompt": "a", "expected": "x", "metadata": {"topic": "t"}}\n\n'
        '{"messages": [{"role": "user", "content": "b"}]}\n',
    )
    cases = list(iter_cases(suite, [tmp_path]))
    assert [c.prompt for c in cases] == ["a", None] and cases[0].metadata == {"topic": "t"}


def test_yaml_suite_as_mapping_or_list(tmp_path: Path) -> None:
    assert count_cases(write(tmp_path, "a.yaml", "name: x\ncases:\n  - prompt: a\n  - prompt: b\n"), [tmp_path]) == 2
    assert count_cases(write(tmp_path, "b.yml", "- prompt: a\n"), [tmp_path]) == 1


@pytest.mark.parametrize(
    ("name", "text", "why"),
    [
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": \n', "line 2: not JSON"),
        ("bad2.jsonl", '{"prompt": "a"}\n["x"]\n', "line 2: a case must be a JSON object"),
        ("bad3.jsonl", '{"expected": "x"}\n', "line 1: .*exactly one of 'prompt' or 'messages'"),
        ("bad4.jsonl", '{"prompt": ""}\n', "line 1: prompt"),
        ("bad.yaml", "cases: {a: 1}\n", "expected a list"),
        ("bad2.yaml", "cases: [a: [\n", "not valid YAML"),
    ],
)
def test_bad_suites_name_where_and_why(tmp_path: Path, name: str, text: str, why: str) -> None:
    with pytest.raises(SuiteError, match=why):
        count_cases(write(tmp_path, name, text), [tmp_path])


def test_missing_file_and_unknown_builtin() -> None:
    with pytest.raises(SuiteError, match="does not exist"):
        count_cases(SuiteRef(path="/nonexistent/suite.jsonl"), [Path("/nonexistent")])
    with pytest.raises(SuiteError, match="no bundled suite"):
        count_cases(SuiteRef(builtin="nope"))


def test_bundled_suite_is_realistic() -> None:
    assert "customer_support" in builtin_names()
    cases = list(iter_cases(SuiteRef(builtin="customer_support")))
    assert len(cases) >= 50
    assert all(c.metadata.get("topic") and c.metadata.get("difficulty") for c in cases)
    assert len({c.metadata["topic"] for c in cases}) >= 5


def test_plan_accepts_with_session_tag_and_rejects_empty_or_bad(tmp_path: Path) -> None:
    start = StartBatchRequested(
        batch_id="b-1",
        config=BatchConfig(model="gpt-4o mini"),
        suite=SuiteRef(cases=[Case(prompt="a"), Case(prompt="b")]),
    )
    plan = plan_batch(start)
    assert not isinstance(plan, BatchRejected)
    assert plan.accepted.total_prompts == 2
    assert plan.accepted.config.session_id == "batch-gpt-4o-mini-" + start.occurred_at.strftime("%Y%m%dT%H%M%SZ")
    prompts = list(plan.prompts())
    assert [p.prompt_id for p in prompts] == ["b-1-000000", "b-1-000001"]
    assert with_defaults(start) == plan.accepted.config  # a redelivery derives the same
    empty = plan_batch(start.model_copy(update={"suite": write(tmp_path, "e.jsonl", "\n")}), [tmp_path])
    assert isinstance(empty, BatchRejected) and "no cases" in empty.reason
    bad = plan_batch(start.model_copy(update={"suite": SuiteRef(path=str(tmp_path / "missing.jsonl"))}), [tmp_path])
    assert isinstance(bad, BatchRejected) and "does not exist" in bad.reason


def test_references_per_case_and_per_yaml_suite(tmp_path: Path) -> None:
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "name: sql\n"
        "references:\n  - {kind: json_valid, weight: 0}\n"
        "cases:\n"
        "  - prompt: count orders\n"
        "    references:\n      - {kind: sql, expected_sql: 'SELECT count(*) FROM orders', database: shop}\n"
        "  - prompt: say hi\n"
    )
    cases = list(iter_cases(SuiteRef(path=str(suite)), [tmp_path]))
    assert [[r.kind for r in c.references] for c in cases] == [["sql", "json_valid"], ["json_valid"]]
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases:\n  - prompt: x\n    references:\n      - {kind: sql, expected_sql: 'SELECT 1'}\n")
    with pytest.raises(SuiteError, match=r"bad\.yaml case 1: references\.0\.sql\.database"):
        list(iter_cases(SuiteRef(path=str(bad)), [tmp_path]))
    typo = tmp_path / "typo.yaml"
    typo.write_text("references:\n  - {kind: exact, valu: x}\ncases:\n  - prompt: x\n")
    with pytest.raises(SuiteError, match="suite references"):
        list(iter_cases(SuiteRef(path=str(typo)), [tmp_path]))
