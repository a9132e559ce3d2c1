"""A batch's SQL settings in the scorer: its timeout in place of each check's, and its own limit
of checks at once per database, within the scorer's."""

import asyncio
from dataclasses import dataclass, field

import pytest

import services.scorer.logic as logic
from contracts.inputs import BatchConfig
from contracts.references import ComponentScore, SqlEquivalence, parse_references
from services.scorer.handlers import on_prompts_judged
from services.scorer.logic import ReferenceDatabases, score_prompt, with_batch_timeout
from services.scorer.sql.execution import sql_verdict
from tests.factories import BatchEvents

SQL = parse_references([{"kind": "sql", "expected_sql": "SELECT 1", "database": "shop", "timeout_s": 20}])


@dataclass
class Counting:
    """Stands in for the query itself (`sql_equivalence`): every check equal; checks in flight
    counted at their peak, with the timeout each got."""

    in_flight: int = 0
    peak: int = 0
    timeouts: list[float] = field(default_factory=list)

    async def __call__(self, ref: SqlEquivalence, answer: str, url: str) -> ComponentScore:
        self.timeouts.append(ref.timeout_s)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        return sql_verdict(ref, "equal", "same rows")


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> Counting:
    counting = Counting()
    monkeypatch.setattr(logic, "sql_equivalence", counting)
    return counting


DBS = {"shop": "postgresql://unused"}


def batch(**cfg: object) -> BatchEvents:
    return BatchEvents("b-sql", 6, config=BatchConfig(model="m", judge_enabled=False, **cfg))  # type: ignore[arg-type]


def test_the_batchs_sql_timeout_replaces_each_checks_own() -> None:
    [ref] = SQL
    assert isinstance(ref, SqlEquivalence)
    assert with_batch_timeout(ref, BatchConfig(model="m")) is ref
    assert with_batch_timeout(ref, BatchConfig(model="m", sql_timeout_s=0.5)).timeout_s == 0.5


async def test_the_sql_check_runs_with_the_batchs_timeout(queries: Counting) -> None:
    evt = batch(sql_timeout_s=1.5).judged(0, answer="SELECT 1", references=SQL)
    out = await score_prompt(evt, ReferenceDatabases(DBS, 4).check)
    assert queries.timeouts == [1.5] and out.components[-1].verdict == "equal"


async def test_a_check_keeps_its_own_timeout_when_the_batch_sets_none(queries: Counting) -> None:
    await score_prompt(batch().judged(0, answer="SELECT 1", references=SQL), ReferenceDatabases(DBS, 4).check)
    assert queries.timeouts == [20]


@pytest.mark.parametrize(("batch_limit", "peak"), [(None, 4), (2, 2), (1, 1), (16, 4)])
async def test_a_batch_holds_its_checks_to_its_own_limit_within_the_scorers(
    queries: Counting, batch_limit: int | None, peak: int
) -> None:
    dbs = ReferenceDatabases(DBS, 4)
    events = [batch(sql_concurrency=batch_limit).judged(i, answer=f"SELECT {i}", references=SQL) for i in range(8)]
    out = await on_prompts_judged(events, dbs, 1.0)
    assert queries.peak == peak and all(r.components[-1].verdict == "equal" for r in out)  # type: ignore[union-attr]
    assert dbs._batch_gates == {}  # given back once the batch has nothing in flight
