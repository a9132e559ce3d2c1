"""The samples and history queries on a real PostgreSQL, the query endpoints over a real NATS
server (served by `start_api` as the recorder serves them), exports read back and compared with
the database, and the CLI commands run as processes against both."""

import asyncio
import csv
import io
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import subjects
from contracts.base import Event
from contracts.enums import BatchStatus, FailureCategory, Stage
from contracts.events import CriterionJudgment, Usage
from contracts.inputs import BatchConfig, ChatMessage
from contracts.queries import HistoryQuery, SamplesQuery
from contracts.references import ComponentScore
from contracts.reports import ResumeResult
from evalbus import client, export
from infra.embedded import free_port
from services.recorder import history_queries, reporting, sample_queries
from services.recorder.api import start_api
from services.recorder.repository import record, store_final
from tests.factories import BatchEvents

pytestmark = pytest.mark.integration
CRITERIA = ["accuracy", "clarity"]
N = 12
PENDING = {11}
FAILED = {0: (Stage.CHAT, FailureCategory.TIMEOUT), 5: (Stage.JUDGE, FailureCategory.JUDGE_PARSE_ERROR)}
FAILED[10] = (Stage.CHAT, FailureCategory.RATE_LIMIT)
RETRIED = 7  # failed once (timeout), then answered and scored
LONG = 3  # its answer is 5,000 characters


@dataclass(frozen=True)
class Spec:
    index: int
    status: str
    metadata: dict[str, Any]
    scores: tuple[int, int] | None = None
    latency: float | None = None
    tokens: tuple[int, int] | None = None

    @property
    def overall(self) -> float | None:
        return None if self.scores is None else sum(self.scores) / 2

    @property
    def passed(self) -> bool | None:
        return None if self.scores is None else min(self.scores) >= 7

    @property
    def verdict(self) -> float | None:
        return None if self.overall is None else round(self.overall / 10, 3)


def specs() -> list[Spec]:
    out = []
    for i in range(N):
        meta = {
            "difficulty": "hard" if i % 2 else "easy",
            "n": i,
            "flag": i % 3 == 0,
            "nested": {"src": f"doc{i % 2}"},
        }
        if i in PENDING or i in FAILED:
            status = "pending" if i in PENDING else "failed"
            out.append(Spec(i, status, meta))
            continue
        # scores repeat, so sorts by score need the index tie-break
        out.append(Spec(i, "scored", meta, (4 + i % 6, 5 + i % 4), 100.0 + 10 * ((i * 7) % 11), (10 + i, 20 + i % 3)))
    return out


def answer_of(i: int) -> str:
    return "x" * 5000 if i == LONG else f"answer {i}"


def events(batch_id: str, session: str, experiment: str) -> list[Event]:
    cfg = BatchConfig(model="m", judge_model="j", criteria=CRITERIA, session_id=session, experiment=experiment)
    batch = BatchEvents(batch_id, N, config=cfg)
    out: list[Event] = [batch.accepted()]
    for sp in specs():
        i = sp.index
        msgs = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content=f"question {i}")]
        out.append(batch.queued(i, case_id=f"c{i}", messages=msgs, expected=f"expected {i}", metadata=sp.metadata))
        if i in FAILED:
            stage, category = FAILED[i]
            if stage is Stage.JUDGE:
                usage = Usage(tokens_in=1, tokens_out=1, latency_ms=1)
                out.append(batch.responded(i, "a", messages=msgs, usage=usage))
            out.append(batch.failed(i, stage, category, f"err {i}"))
        if sp.scores is None:
            continue
        if i == RETRIED:
            out.append(batch.failed(i, Stage.CHAT, FailureCategory.TIMEOUT, "slow"))
        assert sp.tokens is not None and sp.latency is not None
        usage = Usage(tokens_in=sp.tokens[0], tokens_out=sp.tokens[1], latency_ms=sp.latency, cost_usd=0.001 * i)
        out.append(batch.responded(i, answer_of(i), messages=msgs, usage=usage))
        judgments = [
            CriterionJudgment(criterion=c, score=v, passed=v >= 7, reasoning=f"{c} of {i}", confidence=0.5)
            for c, v in zip(CRITERIA, sp.scores, strict=True)
        ]
        out.append(batch.judged(i, judgments=judgments, usage=Usage(tokens_in=5, tokens_out=5), answer=answer_of(i)))
        assert sp.verdict is not None and sp.passed is not None
        judge = ComponentScore(name="judge", kind="judge", score=sp.verdict, passed=sp.passed, weight=1, detail="-")
        out.append(
            batch.scored(
                i,
                overall_score=sp.overall,
                passed=sp.passed,
                criteria_passed={c: v >= 7 for c, v in zip(CRITERIA, sp.scores, strict=True)},
                verdict_score=sp.verdict,
                components=[judge],
            )
        )
    return out


@dataclass
class Recorded:
    batch_id: str
    session: str
    experiment: str
    engine: AsyncEngine


@pytest.fixture(scope="module")
async def recorded(servers) -> AsyncIterator[Recorded]:  # type: ignore[no-untyped-def]
    engine = create_async_engine(servers.database_url)
    batch_id = "b-q-" + secrets.token_hex(3)
    tag = secrets.token_hex(3)
    async with engine.begin() as conn:
        await record(conn, events(batch_id, f"s-{tag}", f"e-{tag}"))
    try:
        yield Recorded(batch_id, f"s-{tag}", f"e-{tag}", engine)
    finally:
        await engine.dispose()


@dataclass
class Api:
    nc: Client
    nats_url: str


@pytest.fixture(scope="module")
async def api(servers, recorded: Recorded) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    nc = await nats.connect(servers.nats_url)

    class NothingToRedrive:
        async def redrive(self, batch_id: str, token: str) -> ResumeResult:
            return ResumeResult(batch_id=batch_id, redriven=0, by_event={})

    service = await start_api(nc, recorded.engine, NothingToRedrive())
    await nc.flush()
    try:
        yield Api(nc, servers.nats_url)
    finally:
        await service.stop()
        await nc.drain()


async def page(rec: Recorded, budget: int = 900_000, **kw: Any) -> Any:
    async with rec.engine.connect() as conn:
        return await sample_queries.samples_page(conn, SamplesQuery(batch_id=rec.batch_id, **kw), budget)


async def indexes(rec: Recorded, **kw: Any) -> list[int]:
    got = await page(rec, per_page=500, **kw)
    assert got.total == len(got.items)
    return [s.index for s in got.items]


async def test_samples_carry_everything_recorded(recorded: Recorded) -> None:
    got = await page(recorded, per_page=500)
    assert (got.total, got.pages, got.truncated) == (N, 1, False)
    by_index = {s.index: s for s in got.items}
    assert [s.index for s in got.items] == list(range(N))
    for sp in specs():
        s = by_index[sp.index]
        assert s.status == sp.status and s.case_id == f"c{sp.index}" and s.metadata == sp.metadata
        assert [m.content for m in s.messages] == ["be brief", f"question {sp.index}"]
        assert s.expected == f"expected {sp.index}"
        assert s.overall_score == sp.overall and s.passed == sp.passed and s.verdict_score == sp.verdict
        if sp.scores is not None:
            assert [(jd.criterion, jd.score, jd.reasoning) for jd in s.judgments] == [
                (c, v, f"{c} of {sp.index}") for c, v in zip(CRITERIA, sp.scores, strict=True)
            ]
            assert (s.latency_ms, (s.tokens_in, s.tokens_out), s.model, s.judge_model) == (
                sp.latency,
                sp.tokens,
                "m",
                "j",
            )
            assert [c.name for c in s.components] == ["judge"]
    assert (by_index[0].failure_stage, by_index[0].failure_category, by_index[0].failure_error) == (
        "chat",
        "timeout",
        "err 0",
    )
    assert by_index[5].failure_category == "judge_parse_error" and by_index[5].answer == "a"
    assert by_index[RETRIED].status == "scored" and by_index[RETRIED].failure_category == "timeout"
    assert by_index[11].answer is None and by_index[11].judgments == []
    assert by_index[LONG].answer == "x" * 2000 and by_index[LONG].clipped == {"answer": 5000}


async def test_filters_select_what_they_name(recorded: Recorded) -> None:
    sp = specs()
    scored = [s.index for s in sp if s.status == "scored"]
    assert await indexes(recorded, filters=["status=failed"]) == [0, 5, 10]
    assert await indexes(recorded, filters=["status=failed", "status=pending"]) == [0, 5, 10, 11]
    assert await indexes(recorded, filters=["status=scored"]) == scored
    assert await indexes(recorded, filters=["category=timeout"]) == [0]  # the retried prompt was scored
    assert await indexes(recorded, filters=["stage=judge"]) == [5]
    assert await indexes(recorded, filters=["passed=true"]) == [s.index for s in sp if s.passed]
    assert await indexes(recorded, filters=["passed=false"]) == [s.index for s in sp if s.passed is False]
    assert await indexes(recorded, filters=["criterion.accuracy=true"]) == [
        s.index for s in sp if s.scores and s.scores[0] >= 7
    ]
    assert await indexes(recorded, filters=["case_id=c4"]) == [4]
    assert await indexes(recorded, filters=["model=m", "status=failed"]) == [5]
    assert await indexes(recorded, filters=["metadata.difficulty=hard"]) == list(range(1, N, 2))
    assert await indexes(recorded, filters=["metadata.n=4"]) == [4]
    assert await indexes(recorded, filters=["metadata.flag=true"]) == [i for i in range(N) if i % 3 == 0]
    assert await indexes(recorded, filters=["metadata.nested.src=doc1", "metadata.flag=true"]) == [3, 9]
    assert await indexes(recorded, filters=["metadata.difficulty=x' OR '1'='1"]) == []
    assert await indexes(recorded, min_score=7) == [s.index for s in sp if s.overall and s.overall >= 7]
    assert await indexes(recorded, min_verdict=0.75) == [s.index for s in sp if s.verdict and s.verdict >= 0.75]


async def test_sorts_put_missing_values_last_and_break_ties_by_index(recorded: Recorded) -> None:
    sp = specs()
    scored = [s for s in sp if s.overall is not None]
    unscored = [s.index for s in sp if s.overall is None]
    assert (
        await indexes(recorded, sort="-score")
        == [s.index for s in sorted(scored, key=lambda s: (-(s.overall or 0), s.index))] + unscored
    )
    assert (
        await indexes(recorded, sort="score")
        == [s.index for s in sorted(scored, key=lambda s: (s.overall or 0, s.index))] + unscored
    )
    timed = sorted((s for s in sp if s.latency is not None), key=lambda s: (-(s.latency or 0), s.index))
    assert (await indexes(recorded, sort="-latency"))[: len(timed)] == [s.index for s in timed]
    counted = sorted((s for s in sp if s.tokens), key=lambda s: (sum(s.tokens or ()), s.index))
    assert (await indexes(recorded, sort="tokens", filters=["status=scored"])) == [s.index for s in counted]
    assert await indexes(recorded, sort="-index") == list(reversed(range(N)))


async def test_pages_and_the_index_walk_cover_the_batch_once(recorded: Recorded) -> None:
    pages = [await page(recorded, sort="-score", per_page=5, page=n) for n in (1, 2, 3, 4)]
    assert [(p.total, p.pages) for p in pages] == [(N, 3)] * 4
    assert [len(p.items) for p in pages] == [5, 5, 2, 0]
    assert [s.index for p in pages for s in p.items] == await indexes(recorded, sort="-score")
    walked: list[int] = []
    after = -1
    while True:
        # A small budget: pages come back truncated, and the walk still reaches every sample.
        got = await page(recorded, budget=6000, per_page=4, after_index=after, with_total=False, max_chars=200_000)
        walked += [s.index for s in got.items]
        assert got.total is None
        if got.next_after_index is None:
            break
        after = got.next_after_index
    assert walked == list(range(N))
    long = await page(recorded, budget=3000, after_index=LONG - 1, max_chars=200_000)
    assert long.items[0].index == LONG and long.truncated and long.items[0].clipped["answer"] == 5000
    assert long.next_after_index == long.items[-1].index


async def test_unknown_batch_has_no_samples(recorded: Recorded) -> None:
    async with recorded.engine.connect() as conn:
        assert await sample_queries.samples_page(conn, SamplesQuery(batch_id="b-none"), 10_000) is None


async def test_history_lists_recent_batches_with_their_counts(recorded: Recorded) -> None:
    async with recorded.engine.connect() as conn:
        mine = await history_queries.history(conn, HistoryQuery(session=recorded.session))
        assert [b.batch_id for b in mine.items] == [recorded.batch_id]
        summary = mine.items[0]
        sp = specs()
        scored = sum(s.status == "scored" for s in sp)
        assert (summary.target, summary.scored, summary.failed, summary.done) == (N, scored, 3, scored + 3)
        assert summary.passed == sum(bool(s.passed) for s in sp)
        assert summary.status is BatchStatus.RUNNING and summary.model == "m" and summary.judge_model == "j"
        assert summary.experiment == recorded.experiment
        assert (
            await history_queries.history(
                conn, HistoryQuery(experiment=recorded.experiment, status=BatchStatus.COMPLETED)
            )
        ).items == []
        recent = await history_queries.history(conn, HistoryQuery(limit=500))
        assert recorded.batch_id in [b.batch_id for b in recent.items]
        stamps = [b.created_at for b in recent.items]
        assert stamps == sorted(stamps, reverse=True)


async def test_endpoints_answer_over_nats(api: Api, recorded: Recorded) -> None:
    got = await client.fetch_samples(api.nc, SamplesQuery(batch_id=recorded.batch_id, filters=["status=failed"]))
    assert [s.index for s in got.items] == [0, 5, 10] and got.total == 3
    hist = await client.fetch_history(api.nc, HistoryQuery(session=recorded.session))
    assert [b.batch_id for b in hist.items] == [recorded.batch_id]
    qual = await client.fetch_quality(api.nc, recorded.batch_id)
    assert qual.batch_id == recorded.batch_id and qual.samples == N - 4 + 1  # answered: scored, and the judge failure
    assert qual.judge_averages.keys() == set(CRITERIA)
    # by hand, as `nats req` sends it
    raw = await api.nc.request(
        subjects.api("batch.samples"), b'{"batch_id": "%s", "per_page": 2}' % recorded.batch_id.encode()
    )
    assert [s["index"] for s in orjson.loads(raw.data)["items"]] == [0, 1]
    info = orjson.loads((await api.nc.request("$SRV.INFO.evalbus-recorder", b"", timeout=2)).data)
    names = {e["subject"] for e in info["endpoints"]}
    assert {subjects.api("batch.samples"), subjects.api("batch.quality"), subjects.api("batches.history")} <= names


@pytest.mark.parametrize(
    ("subject", "body", "code", "says"),
    [
        ("batch.samples", b"{not json", "400", "bad SamplesQuery"),
        ("batch.samples", b"{}", "400", "batch_id"),
        ("batch.samples", b'{"batch_id": "b-x", "per_page": 501}', "400", "per_page"),
        ("batch.samples", b'{"batch_id": "b-x", "filters": ["colour=red"]}', "400", "unknown field 'colour'"),
        ("batch.samples", b'{"batch_id": "b-x", "sort": "name"}', "400", "sort"),
        ("batch.samples", b'{"batch_id": "b-x", "sort": "-score", "after_index": 3}', "400", "index order"),
        ("batch.samples", b'{"batch_id": "b-no-such"}', "404", "no batch 'b-no-such'"),
        ("batch.quality", b'{"batch_id": "b-no-such"}', "404", "no batch"),
        ("batch.quality", b"[]", "400", "batch_id"),
        ("batches.history", b'{"limit": 0}', "400", "limit"),
        ("batches.history", b'{"status": "sleeping"}', "400", "status"),
        # NUL and numbers beyond the columns: 400 naming the field, not 503
        ("batch.status", b'{"batch_id": "b-\\u0000x"}', "400", "batch_id"),
        ("batch.report", b'{"batch_id": "b-\\u0000x"}', "400", "batch_id"),
        ("batch.samples", b'{"batch_id": "b-\\u0000x"}', "400", "batch_id"),
        ("batch.samples", b'{"batch_id": "b-x", "filters": ["case_id=c\\u0000"]}', "400", "filters: Value error, NUL"),
        ("batch.samples", b'{"batch_id": "b-x", "after_index": 1000000000000000000000000000000}', "400", "after_index"),
        ("batches.history", b'{"experiment": "e\\u0000"}', "400", "experiment"),
        ("batches.history", b'{"model": "m\\u0000"}', "400", "model"),
        ("batches.history", b'{"session": "s\\u0000"}', "400", "session"),
        ("batch.resume", b'{"batch_id": "b-\\u0000x"}', "400", "batch_id"),
        ("batch.resume", b'{"batch_id": "b-x", "token": "t\\u0000"}', "400", "token"),
        ("batch.resume", b'{"batch_id": "b-x", "token": 7}', "400", "token"),
        ("batch.resume", b"{not json", "400", "ResumeRequest"),
    ],
)
async def test_bad_requests_get_clear_errors(api: Api, subject: str, body: bytes, code: str, says: str) -> None:
    with pytest.raises(client.ApiError) as err:
        await client.request(api.nc, subjects.api(subject), body, timeout_s=5)
    assert err.value.code == code and says in err.value.description, err.value.description


async def test_a_huge_request_gets_a_bounded_error_and_the_next_request_an_answer(api: Api, recorded: Recorded) -> None:
    big = orjson.dumps({"batch_id": recorded.batch_id, "filters": ["x" * 1000] * 1000})  # ~1 MB
    for body in (big, orjson.dumps({"batch_id": recorded.batch_id, "filters": ["case_id=" + "y" * 900_000]})):
        with pytest.raises(client.ApiError) as err:
            await client.request(api.nc, subjects.api("batch.samples"), body, timeout_s=10)
        assert err.value.code == "400" and "filters" in err.value.description
        assert len(err.value.description) <= 1000 and "xxxxxxxxxx" * 10 not in err.value.description
    got = await client.fetch_samples(api.nc, SamplesQuery(batch_id=recorded.batch_id, per_page=1))
    assert [s.index for s in got.items] == [0]


async def test_resume_answers_404_for_an_unknown_batch_and_never_leaks_a_fault(servers, recorded: Recorded) -> None:  # type: ignore[no-untyped-def]
    from services.recorder.redrive import Redriver
    from services.runtime.messaging.publishing import JetStreamPublisher

    nc = await nats.connect(servers.nats_url)
    service = await start_api(nc, recorded.engine, Redriver(recorded.engine, JetStreamPublisher(nc.jetstream)))
    try:
        # (the module's service answers too, from the same queue group: ask until this one does)
        for _ in range(50):
            try:
                await client.request(nc, subjects.api("batch.resume"), b'{"batch_id": "b-no-such"}', timeout_s=5)
            except client.ApiError as exc:
                assert exc.code == "404" and "no batch 'b-no-such'" in exc.description
                break
        else:
            raise AssertionError("no 404")
    finally:
        await service.stop()

    class Failing:
        async def redrive(self, batch_id: str, token: str) -> ResumeResult:
            raise RuntimeError(
                '(sqlalchemy.dialects.postgresql.asyncpg.Error) SELECT status FROM batches [parameters: ("x",)]'
            )

    service = await start_api(nc, recorded.engine, Failing())
    try:
        for _ in range(50):
            try:
                await client.request(nc, subjects.api("batch.resume"), b'{"batch_id": "b-x"}', timeout_s=5)
            except client.ApiError as exc:
                if exc.code == "503":
                    assert "SELECT" not in exc.description and "asyncpg" not in exc.description
                    assert "parameters" not in exc.description
                    break
        else:
            raise AssertionError("no 503")
    finally:
        await service.stop()
        await nc.drain()


async def test_database_down_is_a_503(servers) -> None:  # type: ignore[no-untyped-def]
    nc = await nats.connect(servers.nats_url)
    engine = create_async_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/none")

    class NotAsked:
        async def redrive(self, batch_id: str, token: str) -> ResumeResult:
            raise AssertionError("not asked")

    service = await start_api(nc, engine, NotAsked())
    try:
        for subject, body in [
            ("batch.samples", b'{"batch_id": "b-x"}'),
            ("batch.quality", b'{"batch_id": "b-x"}'),
            ("batches.history", b"{}"),
        ]:
            # The module's healthy service may answer too (one queue group): ask until the dead one does.
            for _ in range(50):
                try:
                    await client.request(nc, subjects.api(subject), body, timeout_s=5)
                except client.ApiError as exc:
                    if exc.code == "503":
                        assert exc.description == "database unavailable"  # no driver, SQL or address
                        break
            else:
                raise AssertionError(f"{subject}: no 503")
    finally:
        await service.stop()
        await engine.dispose()
        await nc.drain()


async def db_rows(rec: Recorded) -> dict[int, dict[str, Any]]:
    sql = text(
        """
        SELECT p.idx, p.prompt_id, p.metadata, r.answer, r.tokens_in, r.tokens_out, r.latency_ms, s.overall_score,
               s.passed, (SELECT jsonb_object_agg(j.criterion, j.score) FROM judgments j WHERE j.prompt_id = p.prompt_id) AS scores
        FROM prompts p LEFT JOIN responses r USING (prompt_id) LEFT JOIN scores s USING (prompt_id)
        WHERE p.batch_id = :b
        """
    )
    async with rec.engine.connect() as conn:
        return {r.idx: dict(r._mapping) for r in await conn.execute(sql, {"b": rec.batch_id})}


def _loaded(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
async def test_exports_read_back_match_the_database(api: Api, recorded: Recorded, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"batch.{fmt}"
    assert await export.export(api.nc, recorded.batch_id, fmt, out) == N  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.part"))
    if fmt == "jsonl":
        rows = [orjson.loads(line) for line in out.read_text().splitlines()]
        scores = [{jd["criterion"]: jd["score"] for jd in r["judgments"]} or None for r in rows]
    elif fmt == "csv":
        raw = list(csv.DictReader(io.StringIO(out.read_text())))
        rows = [
            {
                "index": int(r["index"]),
                "prompt_id": r["prompt_id"],
                "metadata": orjson.loads(r["metadata"]),
                "answer": r["answer"] or None,
                "tokens_in": int(r["tokens_in"]) if r["tokens_in"] else None,
                "tokens_out": int(r["tokens_out"]) if r["tokens_out"] else None,
                "latency_ms": float(r["latency_ms"]) if r["latency_ms"] else None,
                "overall_score": float(r["overall_score"]) if r["overall_score"] else None,
                "passed": {"True": True, "False": False}.get(r["passed"]),
                "messages": orjson.loads(r["messages"]),
            }
            for r in raw
        ]
        scores = [{c: int(r[f"score_{c}"]) for c in CRITERIA if r[f"score_{c}"]} or None for r in raw]
    else:
        table = pq.read_table(out)
        assert table.schema.field("messages").type.value_type.names == ["role", "content"]
        rows = [{**r, "metadata": orjson.loads(r["metadata"])} for r in table.to_pylist()]
        scores = [{c: r[f"score_{c}"] for c in CRITERIA if r[f"score_{c}"] is not None} or None for r in rows]
    expected = await db_rows(recorded)
    assert [r["index"] for r in rows] == list(range(N))
    for row, score in zip(rows, scores, strict=True):
        db = expected[row["index"]]
        for key in (
            "prompt_id",
            "metadata",
            "answer",
            "tokens_in",
            "tokens_out",
            "latency_ms",
            "overall_score",
            "passed",
        ):
            assert row[key] == db[key], (fmt, row["index"], key)
        assert score == db["scores"]
        assert [m["content"] for m in row["messages"]] == ["be brief", f"question {row['index']}"]
    assert len(rows[LONG]["answer"]) == 5000  # exports are not clipped


async def test_export_of_an_unknown_batch_writes_nothing(api: Api, tmp_path: Path) -> None:
    with pytest.raises(client.ApiError):
        await export.export(api.nc, "b-no-such", "csv", tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []


def run_cli(nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EVALBUS_NATS_URL=nats_url, COLUMNS="200")
    evalbus = str(Path(sys.executable).parent / "evalbus")
    return subprocess.run([evalbus, *args], env=env, capture_output=True, text=True, timeout=60)


async def test_cli_commands(api: Api, recorded: Recorded, tmp_path: Path) -> None:
    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(run_cli, api.nats_url, *args)

    got = await cli("samples", recorded.batch_id, "--filter", "status=failed", "--sort", "-score", "--json")
    assert got.returncode == 0, got.stderr
    assert [s["index"] for s in orjson.loads(got.stdout)["items"]] == [0, 5, 10]
    table = await cli("samples", recorded.batch_id, "--per-page", "3", "--page", "2")
    assert table.returncode == 0 and "page 2 of 4" in table.stdout and "answer 4" in table.stdout
    bad = await cli("samples", recorded.batch_id, "--filter", "colour=red")
    assert bad.returncode == 2 and "unknown field 'colour'" in bad.stderr
    missing = await cli("samples", "b-no-such")
    assert missing.returncode == 1 and "no batch 'b-no-such'" in missing.stderr
    hist = await cli("history", "--session", recorded.session)
    assert hist.returncode == 0 and recorded.batch_id in hist.stdout and f"{N - 1}/{N}" in hist.stdout
    qual = await cli("quality", recorded.batch_id, "--json")
    assert qual.returncode == 0 and orjson.loads(qual.stdout)["batch_id"] == recorded.batch_id
    out = tmp_path / "x.parquet"
    exp = await cli("export", recorded.batch_id, "--format", "parquet", "--out", str(out), "--filter", "passed=true")
    assert exp.returncode == 0, exp.stderr
    assert pq.read_table(out).column("passed").to_pylist() == [True] * sum(bool(s.passed) for s in specs())
    stdout = await cli("export", recorded.batch_id, "--format", "jsonl", "--out", "-")
    assert len(stdout.stdout.splitlines()) == N


async def test_history_counts_finished_batches_from_their_stored_totals(recorded: Recorded) -> None:
    batch_id = "b-qf-" + secrets.token_hex(3)
    async with recorded.engine.begin() as conn:
        await record(conn, events(batch_id, f"{recorded.session}-f", recorded.experiment))
        rep = await reporting.report(conn, batch_id, BatchStatus.PARTIAL_FAILURE)
        assert rep is not None
        await store_final(conn, rep)
    async with recorded.engine.connect() as conn:
        found = await history_queries.history(
            conn, HistoryQuery(experiment=recorded.experiment, status=BatchStatus.PARTIAL_FAILURE)
        )
    [summary] = found.items
    assert summary.batch_id == batch_id and summary.finished_at is not None
    assert (summary.scored, summary.failed, summary.passed) == (rep.completed, rep.failed, rep.passed)


async def test_a_sample_too_big_for_any_reply_comes_without_its_bulk(recorded: Recorded) -> None:
    batch_id = "b-qb-" + secrets.token_hex(3)
    cfg = BatchConfig(model="m")
    bulky = {"values": list(range(5000))}  # no string to clip: only dropping it makes the sample fit
    batch = BatchEvents(batch_id, 2, config=cfg)
    async with recorded.engine.begin() as conn:
        await record(conn, [batch.accepted(), *(batch.queued(i, metadata=bulky) for i in range(2))])
    async with recorded.engine.connect() as conn:
        got = await sample_queries.samples_page(conn, SamplesQuery(batch_id=batch_id, after_index=-1), 4000)
    assert got is not None and [s.index for s in got.items] == [0] and got.truncated and got.next_after_index == 0
    assert got.items[0].metadata == {} and got.items[0].clipped["metadata"] == len(orjson.dumps(bulky))


_fuzz_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
_fuzz_keys = st.sampled_from(["batch_id", "filters", "after_index", "page", "token", "session", "sort", "limit"])


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    endpoint=st.sampled_from(["batch.status", "batch.samples", "batch.resume", "batch.quality", "batches.history"]),
    body=st.dictionaries(_fuzz_keys, _fuzz_values, max_size=4) | st.binary(max_size=60).map(lambda b: {"raw": b.hex()}),
)
async def test_any_request_gets_an_answer_or_a_bounded_error(api: Api, endpoint: str, body: dict[str, Any]) -> None:
    try:
        await client.request(api.nc, subjects.api(endpoint), json.dumps(body).encode(), timeout_s=10)
    except client.ApiError as exc:
        assert exc.code in ("400", "404") and len(exc.description) <= 1000, exc
        assert "Traceback" not in exc.description and "SELECT" not in exc.description
