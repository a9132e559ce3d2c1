"""A batch's quality report and scoring figures from rows in a real PostgreSQL, against values
computed by hand."""

import secrets

import orjson
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.base import Event
from contracts.events import JudgeCalls, Usage
from contracts.inputs import BatchConfig
from contracts.quality import QualityConfig
from contracts.references import ComponentScore
from services.recorder import quality, reporting
from services.recorder.repository import record, store_quality
from tests.factories import BatchEvents

pytestmark = pytest.mark.integration
CFG = BatchConfig(
    model="m",
    criteria=["accuracy", "clarity"],
    quality=QualityConfig(min_chars={"answer": 20, "reasoning": 10, "citations": 50}),
)
# (answer, reasoning, citations, difficulty, topic, tokens in, tokens out, judge scores, sql verdict)
SAMPLES = [
    ("a" * 30, "r" * 12, ["c" * 10], "easy", "billing", 10, 20, (8, 9), "equal"),
    ("b" * 10, "r" * 8, ["c" * 20, "d" * 9], "hard", "billing", 12, 30, (6, 7), "different"),
    ("c" * 50, "r" * 40, [], "hard", "refunds", 8, 10, (9, 9), "invalid_sql"),
    ("d" * 22, "r" * 10, ["e" * 5], "easy", "billing", 10, 40, (7, 5), "equal"),
]


def events(batch_id: str) -> list[Event]:
    batch = BatchEvents(batch_id, len(SAMPLES) + 1, config=CFG)
    out: list[Event] = [batch.accepted()]
    for i, (ans, why, cites, diff, topic, tin, tout, scores, verdict) in enumerate(SAMPLES):
        answer = orjson.dumps({"answer": ans, "reasoning": why, "citations": cites}).decode()
        calls = JudgeCalls(
            share=0.25 + (1 if i == 3 else 0), unbatched=1, batch_size=1 if i == 3 else 4, fallback=i == 3
        )
        sql = ComponentScore(
            name="orders",
            kind="sql",
            score=float(verdict == "equal"),
            passed=verdict == "equal",
            weight=1,
            detail="-",
            verdict=verdict,
        )
        judge = ComponentScore(
            name="judge", kind="judge", score=(sum(scores) / 2 - 1) / 9, passed=min(scores) >= 7, weight=1, detail="-"
        )
        out += [
            batch.queued(i, metadata={"difficulty": diff, "topic": topic}),
            batch.responded(i, answer, usage=Usage(tokens_in=tin, tokens_out=tout)),
            batch.judged(i, scores, answer=answer, usage=Usage(tokens_in=100, tokens_out=5), calls=calls),
            batch.scored(
                i,
                overall_score=sum(scores) / 2,
                passed=judge.passed and sql.passed,
                components=[judge, sql],
                verdict_score=(judge.score + sql.score) / 2,
            ),
        ]
    last = len(SAMPLES)
    return [*out, batch.queued(last), batch.failed(last, error="slow")]


async def test_quality_report_and_scoring_figures_match_hand_computed_values(servers) -> None:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    batch_id = "b-qual-" + secrets.token_hex(3)
    try:
        async with engine.begin() as conn:
            await record(conn, events(batch_id))
        async with engine.connect() as conn:
            live = await quality.batch_quality(conn, batch_id)  # nothing stored yet: computed now
            rep = await reporting.report(conn, batch_id)
        assert live is not None and rep is not None
        assert (live.samples, live.scored, live.failed) == (4, 4, 1)
        assert live.total_tokens == 30 + 42 + 18 + 50 and live.avg_tokens_per_sample == 35.0
        assert live.judge_tokens == 4 * 105
        lengths = {f.field: f for f in live.text_fields}
        assert lengths["answer"].avg_chars == (30 + 10 + 50 + 22) / 4 and lengths["answer"].below_min == 1
        assert lengths["reasoning"].avg_chars == (12 + 8 + 40 + 10) / 4 and lengths["reasoning"].below_min == 1
        # citations joined by newlines: 10, 20+1+9, 0, 5
        assert lengths["citations"].avg_chars == (10 + 30 + 0 + 5) / 4 and lengths["citations"].max_chars == 30
        assert live.distributions == {"difficulty": {"easy": 2, "hard": 2}, "topic": {"billing": 3, "refunds": 1}}
        assert live.judge_averages == {"accuracy": 7.5, "clarity": 7.5}
        assert live.pass_rate == 0.25  # only the first passes both the judge and the SQL check
        assert [f.code for f in live.flags] == ["short_citations", "failures"]  # 1 of 5 failed > 10%
        assert live.rating == "Poor"  # pass rate 0.25 < 0.5

        assert rep.judge_calls == 2.0 and rep.judge_calls_saved == 2.0 and rep.judge_fallbacks == 1
        by_name = {c.name: c for c in rep.components}
        assert [c.name for c in rep.components] == ["judge", "orders"]
        assert (by_name["judge"].evaluated, by_name["judge"].passed) == (4, 2)
        assert by_name["orders"].verdicts == {"different": 1, "equal": 2, "invalid_sql": 1}
        assert by_name["orders"].mean_score == 0.5

        async with engine.begin() as conn:
            await store_quality(conn, live)
            await store_quality(conn, live)  # a second finish (after a crash) overwrites
        async with engine.connect() as conn:
            stored = await quality.batch_quality(conn, batch_id)
        assert stored is not None and stored.model_dump(exclude={"computed_at"}) == live.model_dump(
            exclude={"computed_at"}
        )
        assert stored.computed_at == live.computed_at
    finally:
        await engine.dispose()
