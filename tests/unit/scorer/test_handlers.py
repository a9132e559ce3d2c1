"""The scorer's handler with fake reference databases: a fetch of judged answers scored together,
each answer's trouble its own."""

import asyncio

import pytest

import services.scorer.handlers as handlers
from contracts.enums import FailureCategory, Stage
from contracts.events import PromptFailed, PromptJudged, PromptScored
from contracts.inputs import BatchConfig
from contracts.references import ComponentScore, SqlEquivalence, parse_references
from services.scorer.handlers import on_prompts_judged
from services.scorer.logic import ReferenceDatabases
from services.scorer.sql.execution import sql_verdict
from tests.factories import BatchEvents

BATCH = BatchEvents("b-score", 4, config=BatchConfig(model="m", criteria=["accuracy", "clarity"]))
SQL = parse_references([{"kind": "sql", "expected_sql": "SELECT 1", "database": "shop"}])
TIMEOUT_S = 1.0


class FakeDatabases(ReferenceDatabases):
    """Every SQL answer equal to its expected query; the checks in flight counted at their peak."""

    def __init__(self) -> None:
        super().__init__({}, limit=1)
        self.answers: list[str] = []
        self.in_flight = self.peak = 0

    async def check(self, ref: SqlEquivalence, answer: str) -> ComponentScore:
        self.answers.append(answer)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return sql_verdict(ref, "equal", "same rows")


async def test_each_judged_answer_is_scored_in_order() -> None:
    events = [BATCH.judged(0, [8, 9]), BATCH.judged(1, [5, 9])]
    out = await on_prompts_judged(events, FakeDatabases(), TIMEOUT_S)
    assert all(isinstance(r, PromptScored) for r in out) and [r.index for r in out] == [0, 1]
    first, second = out
    assert isinstance(first, PromptScored) and isinstance(second, PromptScored)
    assert (first.passed, first.overall_score) == (True, 8.5)
    assert (second.passed, second.reasons) == (False, ["accuracy 5 < 7"])


async def test_sql_checks_of_one_fetch_overlap() -> None:
    databases = FakeDatabases()
    events = [BATCH.judged(i, answer=f"SELECT {i}", references=SQL) for i in range(4)]
    out = await on_prompts_judged(events, databases, TIMEOUT_S)
    assert sorted(databases.answers) == [f"SELECT {i}" for i in range(4)]
    assert databases.peak == 4  # gathered, not one after another
    assert all(isinstance(r, PromptScored) and r.components[-1].verdict == "equal" for r in out)


async def test_an_event_whose_scoring_raises_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    real = handlers.score_prompt

    async def score_prompt(evt: PromptJudged, *args: object, **kw: float) -> PromptScored:
        if evt.index == 1:
            raise RecursionError("too deep")
        return await real(evt, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(handlers, "score_prompt", score_prompt)
    out = await on_prompts_judged([BATCH.judged(i) for i in range(3)], FakeDatabases(), TIMEOUT_S)
    assert [type(r) for r in out] == [PromptScored, PromptFailed, PromptScored]
    failed = out[1]
    assert isinstance(failed, PromptFailed)
    assert (failed.prompt_id, failed.stage, failed.category) == (
        "b-score-000001",
        Stage.SCORE,
        FailureCategory.INVALID_INPUT,
    )
    assert failed.error == "the scorer could not score this answer: RecursionError"
