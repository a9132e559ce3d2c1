"""A batch's safety settings where they act, on real servers: the model's and the judge's timeouts
apart on real HTTP calls (ChatClient against a scripted model), and the SQL timeout and SQL
concurrency on a real PostgreSQL."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from contracts.enums import FailureCategory
from contracts.events import PromptFailed, PromptJudged, PromptResponded, PromptScored
from contracts.inputs import BatchConfig
from contracts.references import parse_references
from services.chat_runner.logic import run_prompt
from services.judge.logic import grade_group
from services.runtime.models.client import ChatClient
from services.runtime.models.endpoints import Endpoint, Endpoints
from services.scorer.handlers import on_prompts_judged
from services.scorer.logic import ReferenceDatabases
from services.scorer.sql.execution import asyncpg_dsn
from tests.factories import BatchEvents
from tests.scripted_model import Reply, ScriptedModel, ok_body, scripted_server

pytestmark = pytest.mark.integration

DELAY_S = 0.6  # every reply of the scripted model takes this long
SHORT_S, LONG_S = 0.2, 5.0
JUDGMENT = {
    "judgments": [
        {"criterion": "accuracy", "score": 8, "passed": True, "reasoning": "r", "confidence": 0.9, "suggestions": []}
    ]
}


@pytest.fixture
async def slow_model() -> AsyncIterator[ScriptedModel]:
    body = orjson.dumps(ok_body(orjson.dumps(JUDGMENT).decode()))
    async with scripted_server(Reply(body=body, delay_s=DELAY_S)) as scripted:
        yield scripted


@pytest.fixture
async def client() -> AsyncIterator[ChatClient]:
    chat = ChatClient(endpoint_concurrency=8, retry_base_s=0.01, retry_max_s=0.05)
    yield chat
    await chat.aclose()


def endpoints(model: ScriptedModel) -> Endpoints:
    return Endpoints([Endpoint(model.base_url, name="default"), Endpoint(model.base_url, name="judge")])


def batch(**cfg: object) -> BatchEvents:
    config = BatchConfig(model="m", criteria=["accuracy"], max_retries=0, **cfg)  # type: ignore[arg-type]
    return BatchEvents("b-tuning", 2, config=config)


async def chat_and_judge(
    model: ScriptedModel, client: ChatClient, events: BatchEvents
) -> tuple[PromptResponded | PromptFailed, PromptJudged | PromptFailed]:
    eps = endpoints(model)
    chat = await run_prompt(client, events.queued(0), eps)
    [judged] = await grade_group(client, [events.responded(1)], eps)
    return chat, judged


async def test_a_short_model_timeout_leaves_the_judge_its_own(slow_model: ScriptedModel, client: ChatClient) -> None:
    chat, judged = await chat_and_judge(slow_model, client, batch(timeout_s=SHORT_S, judge_timeout_s=LONG_S))
    assert isinstance(chat, PromptFailed) and chat.category is FailureCategory.TIMEOUT, chat
    assert f"no answer within {SHORT_S:g}s" in chat.error
    assert isinstance(judged, PromptJudged) and judged.judgments[0].score == 8, judged
    assert len(slow_model.seen) == 2  # one call each, no retry


async def test_a_short_judge_timeout_leaves_the_model_its_own(slow_model: ScriptedModel, client: ChatClient) -> None:
    chat, judged = await chat_and_judge(slow_model, client, batch(timeout_s=LONG_S, judge_timeout_s=SHORT_S))
    assert isinstance(chat, PromptResponded), chat
    assert isinstance(judged, PromptFailed) and judged.category is FailureCategory.TIMEOUT, judged
    assert f"no answer within {SHORT_S:g}s" in judged.error


async def test_without_a_judge_timeout_the_judge_has_the_models(slow_model: ScriptedModel, client: ChatClient) -> None:
    chat, judged = await chat_and_judge(slow_model, client, batch(timeout_s=SHORT_S))
    assert isinstance(chat, PromptFailed) and isinstance(judged, PromptFailed)
    assert chat.category is judged.category is FailureCategory.TIMEOUT


# ---- SQL checks --------------------------------------------------------------------------------

SLOW_SQL = "SELECT 1 AS one FROM pg_sleep({s})"
CHECK = "evalbus-sql-check"  # the application_name of every check's connection


def sql_batch(seconds: float, **cfg: object) -> tuple[BatchEvents, list[object]]:
    refs = parse_references([{"kind": "sql", "expected_sql": "SELECT 1 AS one", "database": "bench", "timeout_s": 5}])
    config = BatchConfig(model="m", judge_enabled=False, **cfg)  # type: ignore[arg-type]
    return BatchEvents("b-sql-tuning", 8, config=config), [SLOW_SQL.format(s=seconds), refs]


async def score(servers, events: BatchEvents, answer: str, refs: list[object], n: int) -> list[PromptScored]:  # type: ignore[no-untyped-def]
    databases = ReferenceDatabases({"bench": servers.database_url}, limit=4)
    judged = [events.judged(i, answer=answer, references=refs, judgments=[], judge_model=None) for i in range(n)]
    out = await on_prompts_judged(judged, databases, 1.0)
    assert all(isinstance(r, PromptScored) for r in out), out
    return list(out)  # type: ignore[arg-type]


async def test_the_batchs_sql_timeout_replaces_the_checks_own(servers) -> None:  # type: ignore[no-untyped-def]
    events, (answer, refs) = sql_batch(1.0, sql_timeout_s=0.3)
    [scored] = await score(servers, events, answer, refs, 1)  # type: ignore[arg-type]
    check = scored.components[-1]
    assert (check.verdict, check.passed) == ("timeout", False), check
    assert "0.3s statement timeout" in check.detail
    events, (answer, refs) = sql_batch(1.0)  # the check's own 5 s: the same query finishes
    [scored] = await score(servers, events, answer, refs, 1)  # type: ignore[arg-type]
    assert scored.components[-1].verdict == "equal", scored.components[-1]


@contextlib.asynccontextmanager
async def peak_checks(servers) -> AsyncIterator[list[int]]:  # type: ignore[no-untyped-def]
    """The most SQL-check connections open at once on the database while the block runs."""
    conn = await asyncpg.connect(asyncpg_dsn(servers.database_url))
    peak = [0]
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            n = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", CHECK)
            peak[0] = max(peak[0], int(n))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(watch())
    try:
        yield peak
    finally:
        stop.set()
        await task
        await conn.close()


@pytest.mark.parametrize(("sql_concurrency", "most"), [(1, 1), (2, 2)])
async def test_the_batchs_sql_concurrency_limits_its_connections(servers, sql_concurrency: int, most: int) -> None:  # type: ignore[no-untyped-def]
    events, (answer, refs) = sql_batch(0.3, sql_concurrency=sql_concurrency)
    async with peak_checks(servers) as peak:
        out = await score(servers, events, answer, refs, 4)  # type: ignore[arg-type]
    assert all(r.components[-1].verdict == "equal" for r in out)
    assert 1 <= peak[0] <= most, peak


async def test_without_a_batch_sql_concurrency_the_scorers_limit_applies(servers) -> None:  # type: ignore[no-untyped-def]
    events, (answer, refs) = sql_batch(0.5)
    async with peak_checks(servers) as peak:
        await score(servers, events, answer, refs, 6)  # type: ignore[arg-type]
    assert 2 <= peak[0] <= 4, peak  # the checks overlap, up to the scorer's 4
