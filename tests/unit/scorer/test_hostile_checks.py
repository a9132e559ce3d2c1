"""Hostile references and answers: every one is refused at validation or ends as a component
verdict; none raises, freezes the event loop or stops the other prompts of a batch."""

import asyncio
import json
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.events import PromptJudged, PromptScored
from contracts.inputs import BatchConfig
from contracts.references import JsonSchema, Regex, compile_pattern, parse_references
from services.scorer.logic import score_prompt
from services.scorer.references import check, extract_fenced
from tests.factories import BatchEvents

# Catastrophic for a backtracking engine: 2^n ways to split the answer before the \x01 that ends
# it cannot be found after the last character.
BACKTRACKING = "(.|.)*\u0001"
SLOW_ANSWER = "\u0001" + "a" * 5_000


def judged(index: int, answer: str, references: list[dict[str, Any]]) -> PromptJudged:
    """An answer not judged (its reference checks alone decide)."""
    batch = BatchEvents("b", config=BatchConfig(model="m"))
    return batch.judged(index, judge_model=None, judgments=[], answer=answer, references=parse_references(references))


# ---- defect 7: patterns that cannot be compiled are refused with a reason, never raised later ----


def test_a_deeply_nested_pattern_is_a_validation_error_not_a_recursion_error() -> None:
    wire = json.dumps({"kind": "regex", "pattern": "(" * 3000 + ")" * 3000})
    with pytest.raises(ValidationError, match="at most 500 characters"):
        parse_references(json.loads(f"[{wire}]"))
    with pytest.raises(ValidationError, match="nests groups deeper than 50 levels"):
        Regex(pattern="(" * 200 + ")" * 200)
    # An event carrying it is refused like any invalid event (the worker dead-letters it).
    evt = judged(0, "x", []).model_dump(mode="json")
    evt["references"] = [{"kind": "regex", "pattern": "(" * 200 + ")" * 200}]
    with pytest.raises(ValidationError, match="nests groups"):
        PromptJudged.model_validate_json(json.dumps(evt))


def test_a_schema_pattern_gets_the_same_treatment() -> None:
    with pytest.raises(ValidationError, match=r"\$\.properties\.a\.pattern: nests groups deeper"):
        JsonSchema(schema={"properties": {"a": {"type": "string", "pattern": "(" * 200 + ")" * 200}}})
    with pytest.raises(ValidationError, match=r"\$\.items\.pattern: does not compile"):
        JsonSchema(schema={"items": {"pattern": "(?P<x"}})
    many = {f"p{i}": {"type": "string", "pattern": "a" * 400} for i in range(3)}
    with pytest.raises(ValidationError, match="patterns have more than 1000 characters together"):
        JsonSchema(schema={"properties": many})


@pytest.mark.parametrize("bomb", ["(?:a{10000}){10000}", "(?:(?:(?:a{100}){100}){100})", "(?:ab{100}){200}"])
def test_patterns_the_compiler_would_take_minutes_on_are_refused_before_compiling(bomb: str) -> None:
    with pytest.raises(ValidationError, match="too large once its repeats are expanded"):
        Regex(pattern=bomb)


def test_ordinary_patterns_still_compile_with_the_flags_the_readme_names() -> None:
    ref = Regex(pattern=r"^(?P<word>\w+)\s+(?P=word)$", flags=["IGNORECASE", "MULTILINE", "ASCII"])
    assert check(ref, "x\nHello hello\ny").passed
    assert not check(Regex(pattern=r"\w+", mode="fullmatch", flags=["ASCII"]), "\u00e9t\u00e9").passed
    assert check(Regex(pattern=r"a # letter a\n b", flags=["VERBOSE"]), "ab").passed
    assert check(Regex(pattern=r"(?:a{0,65535}){0,65535}x"), "aax").passed  # open ranges are not unrolled
    # Syntax outside Python's `re` is refused, as it always was (the README promises re patterns).
    with pytest.raises(ValidationError, match="does not compile"):
        Regex(pattern=r"\p{L}+")
    assert compile_pattern("a+") is compile_pattern("a+")  # compiled once, then shared


# ---- defect 8: a backtracking pattern times out off the loop; the batch's other prompts score ----


async def test_a_backtracking_pattern_times_out_while_the_loop_and_the_other_prompts_go_on() -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    slow = judged(0, SLOW_ANSWER, [{"kind": "regex", "pattern": BACKTRACKING}, {"kind": "contains", "value": "aaa"}])
    normal = [judged(i, f"order VL-{i}", [{"kind": "regex", "pattern": r"VL-\d+"}]) for i in range(1, 4)]
    started = time.monotonic()
    scored = await asyncio.wait_for(
        asyncio.gather(*(score_prompt(e, pattern_timeout_s=0.5) for e in [slow, *normal])), timeout=60
    )
    elapsed = time.monotonic() - started
    stop.set()
    await ticking

    timed_out, contains = scored[0].components
    assert timed_out.verdict == "timeout" and not timed_out.passed and timed_out.score == 0
    assert "did not finish within the 0.5s limit" in timed_out.detail
    assert contains.passed  # the answer's other checks still ran
    assert not scored[0].passed and any("did not finish" in r for r in scored[0].reasons)
    assert all(s.passed and s.components[0].verdict is None for s in scored[1:])
    # The loop kept running while the pattern matched in its thread (the GIL was released).
    assert ticks >= 10 or elapsed < 0.2, (ticks, elapsed)


async def timed_score(evt: PromptJudged) -> tuple[PromptScored, float]:
    started = time.monotonic()
    scored = await asyncio.wait_for(score_prompt(evt, pattern_timeout_s=0.3), timeout=60)
    return scored, time.monotonic() - started


async def test_one_answers_patterns_share_one_time_limit() -> None:
    refs = [{"kind": "regex", "pattern": BACKTRACKING, "name": f"slow{i}"} for i in range(5)]
    refs.append({"kind": "json_schema", "schema": {"type": "string", "pattern": BACKTRACKING}, "allow_fence": False})
    _, one = await timed_score(judged(0, SLOW_ANSWER, refs[:1]))  # the baseline: one pattern's budget
    scored, five = await timed_score(judged(0, SLOW_ANSWER, refs))
    assert [c.verdict for c in scored.components] == ["timeout"] * 5 + [None]  # the schema's answer is not JSON
    assert five < 3 * one, (five, one)  # a budget per pattern would take five times the one


def test_a_schema_pattern_that_backtracks_is_a_timeout_verdict() -> None:
    ref = JsonSchema(schema={"type": "object", "properties": {"a": {"type": "string", "pattern": BACKTRACKING}}})
    out = check(ref, json.dumps({"a": SLOW_ANSWER}))
    assert out.verdict == "timeout" and not out.passed


# ---- other ways one judged event could raise --------------------------------------------------


def test_hostile_answers_end_as_verdicts() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    assert "invalid JSON" in check(parse_references([{"kind": "json_valid"}])[0], deep).detail
    nested = "[" * 900 + "]" * 900  # parses, but is too deep to print in a detail
    out = check(JsonSchema(schema={"enum": [1]}), nested)
    assert not out.passed and "is not one of" in out.detail
    numeric = parse_references([{"kind": "numeric", "value": 1}])[0]
    assert "not a finite number" in check(numeric, "1" * 100_000).detail
    assert "not a finite number" in check(numeric, "1e999999").detail
    big = check(JsonSchema(schema={"type": "integer", "maximum": 1}), "9" * 4000)
    assert not big.passed and "maximum" in big.detail


def test_answers_with_nul_or_lone_surrogates_never_reach_a_check() -> None:
    evt = judged(0, "x", [{"kind": "sql", "expected_sql": "SELECT 1", "database": "shop"}]).model_dump(mode="json")
    raw = json.dumps(evt).replace('"answer": "x"', '"answer": "SELECT 1\\u0000"')
    with pytest.raises(ValidationError, match="NUL"):
        PromptJudged.model_validate_json(raw)
    with pytest.raises(ValidationError, match="unicode"):  # from Python too (JSON parsing refuses it itself)
        PromptJudged.model_validate(evt | {"answer": "SELECT '\ud800'"})


async def test_a_check_that_fails_unexpectedly_is_a_failed_component(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.scorer.logic as logic

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(logic, "check", broken)
    scored = await score_prompt(judged(0, "x", [{"kind": "contains", "value": "x"}]))
    assert scored.components[0].verdict == "error" and "RuntimeError" in scored.components[0].detail


# ---- fences: linear, and the same blocks as before ---------------------------------------------

_OLD_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _old_extract_fenced(answer: str, languages: tuple[str, ...]) -> str | None:
    wanted = {lang.casefold() for lang in languages}
    for match in _OLD_FENCE.finditer(answer):
        if match.group(1).casefold() in wanted:
            return match.group(2)
    whole = _OLD_FENCE.fullmatch(answer.strip())
    if whole and not whole.group(1):
        return whole.group(2)
    return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["```", "json", "sql", " ", "\n", "x", "{}", "\t", "-"]), max_size=30).map("".join))
def test_fences_are_found_as_the_regex_found_them(answer: str) -> None:
    for languages in (("json",), ("sql", "psql")):
        assert extract_fenced(answer, languages) == _old_extract_fenced(answer, languages)


def fastest_of_five(answer: str) -> float:
    """Seconds to look for fences in `answer` and check it as JSON, the least of five runs (a
    load spike on the machine lengthens one run, rarely all five)."""
    ref = parse_references([{"kind": "json_valid"}])[0]
    times = []
    for _ in range(5):
        started = time.perf_counter()
        assert extract_fenced(answer, ("json",)) is None
        assert check(ref, answer).passed is False
        times.append(time.perf_counter() - started)
    return min(times)


def test_an_answer_made_of_fence_marks_is_linear() -> None:
    # The regex took ~3 s on 60k characters of this, quadratically more beyond: eight times the
    # answer took it 64 times as long, where linear work takes 8 times as long.
    small = fastest_of_five("```" * 8_250)
    large = fastest_of_five("```" * 66_000)
    assert large < 24 * small, (large, small)
