"""Judge batching against the real fake-model server over HTTP, with the real model client: a
chunk whose batched reply comes back malformed is graded one answer at a time while the other
chunk stays batched, and every score equals the one grading each answer alone gives."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from contracts.enums import FailureCategory
from contracts.events import PromptFailed, PromptJudged, PromptResponded
from contracts.inputs import BatchConfig, ChatMessage
from services.fake_model.server import start_server
from services.fake_model.settings import FakeModelSettings
from services.fake_model.testing import support_answer
from services.judge.batcher import JudgeBatcher
from services.runtime.models.client import ChatClient
from services.runtime.models.endpoints import Endpoint, Endpoints
from tests.factories import BatchEvents

MARKER = "<<break this batch>>"
CRITERIA = ["helpfulness", "accuracy", "clarity"]


@asynccontextmanager
async def judge_server(**overrides: Any) -> AsyncIterator[tuple[str, ChatClient]]:
    runner, port = await start_server(FakeModelSettings(**{"port": 0, **overrides}))
    client = ChatClient(endpoint_concurrency=16, retry_base_s=0.0, retry_max_s=0.0)
    try:
        yield f"http://127.0.0.1:{port}/v1", client
    finally:
        await client.aclose()
        await runner.cleanup()


def answers(batch_id: str, **cfg: Any) -> list[PromptResponded]:
    config = BatchConfig(model="evalbus-fake", judge_model="evalbus-fake-judge", criteria=CRITERIA, **cfg)
    batch = BatchEvents(batch_id, 6, config=config)
    out = []
    for i in range(6):
        question = f"My order {i} of a PulseBuds Pro never arrived"
        answer = support_answer(question) + (f" {MARKER}" if i == 1 else "")
        out.append(batch.responded(i, answer, messages=[ChatMessage(role="user", content=question)]))
    return out


async def grade(base_url: str, client: ChatClient, evts: list[PromptResponded]) -> list[PromptJudged | PromptFailed]:
    batcher = JudgeBatcher(client, Endpoints([Endpoint(base_url, name="judge")]), linger_s=0.05)
    return await asyncio.wait_for(asyncio.gather(*(batcher.judge(e) for e in evts)), 30)


def judged(results: list[PromptJudged | PromptFailed]) -> list[PromptJudged]:
    assert all(isinstance(r, PromptJudged) for r in results), results
    return [r for r in results if isinstance(r, PromptJudged)]


async def stats(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as http:
        return (await http.get(base_url.removesuffix("/v1") + "/stats")).json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["combined", "per_criterion"])
async def test_a_malformed_chunk_falls_back_one_by_one_and_scores_match_unbatched(mode: str, tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    async with judge_server(malformed_batch_marker=MARKER, request_log=log) as (base_url, client):
        batched = judged(await grade(base_url, client, answers("b-batched", judge_batch_size=3, judge_mode=mode)))
        alone = judged(await grade(base_url, client, answers("b-alone", judge_batch_size=1, judge_mode="combined")))
        counts = await stats(base_url)

    calls_per_answer = 1 if mode == "combined" else len(CRITERIA)
    for b, a in zip(batched, alone, strict=True):
        assert [j.criterion for j in b.judgments] == CRITERIA
        assert b.judgments == a.judgments  # batching never changes a score
        assert b.judge_model == "evalbus-fake-judge" and b.usage.tokens_in > 0 and b.usage.tokens_out > 0
    for r in batched[:3]:  # the chunk holding the marked answer: its batched call was unusable
        assert (r.calls.fallback, r.calls.batch_size, r.calls.unbatched) == (True, 1, calls_per_answer)
        assert r.calls.share == pytest.approx(calls_per_answer * (1 + 1 / 3))
    for r in batched[3:]:  # the other chunk stayed batched
        assert (r.calls.fallback, r.calls.batch_size, r.calls.unbatched) == (False, 3, calls_per_answer)
        assert r.calls.share == pytest.approx(calls_per_answer / 3)
    assert all((r.calls.share, r.calls.batch_size, r.calls.fallback) == (1, 1, False) for r in alone)

    records = [orjson.loads(line) for line in log.read_text().splitlines()]
    batched_calls = [r["prompt_id"].split(",") for r in records if r["prompt_id"].startswith("b-batched")]
    ids = [e.prompt_id for e in answers("b-batched")]
    assert sorted(map(tuple, batched_calls)) == sorted(
        [tuple(ids[:3]), tuple(ids[3:]), *((i,) for i in ids[:3])] * calls_per_answer
    )
    assert all(r["stage"] == "judge" and r["outcome"] == "ok" for r in records)
    assert counts["judge"]["ok"] == len(records) == 5 * calls_per_answer + 6


@pytest.mark.parametrize(
    ("fault", "category"),
    [
        ({"error_rate_500": 1.0}, FailureCategory.SERVER_ERROR),
        ({"malformed_rate": 1.0}, FailureCategory.JUDGE_PARSE_ERROR),
    ],
)
async def test_the_fake_models_faults_still_reach_batched_calls(fault: dict[str, float], category: str) -> None:
    async with judge_server(**fault) as (base_url, client):
        out = await grade(base_url, client, answers("b-faulty", judge_batch_size=3, max_retries=1))
    for r in out:
        assert isinstance(r, PromptFailed) and r.category == category
    if category == FailureCategory.SERVER_ERROR:  # a call error fails the chunk: no fallback
        assert all(isinstance(r, PromptFailed) and r.attempts == 2 for r in out)
    else:  # every batched reply and every fallback came back malformed
        assert all(isinstance(r, PromptFailed) and "graded alone" in r.error for r in out)
