"""A small batch through the whole stack, then read back with `evalbus history`, `samples`,
`quality` and `export`, as a user would, and compared with the database."""

import asyncio
import csv
import json
import secrets
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from evalbus.stack import Stack

pytestmark = pytest.mark.e2e
N = 12
TOPICS = ["billing", "shipping", "returns"]


async def answers(database_url: str, batch_id: str) -> dict[int, str]:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT p.idx, r.answer FROM prompts p JOIN responses r USING (prompt_id) WHERE p.batch_id = :b"),
                {"b": batch_id},
            )
            return {r.idx: r.answer for r in rows}
    finally:
        await engine.dispose()


async def test_a_batch_read_back_through_the_query_commands(stack: Stack, cli, tmp_path: Path) -> None:
    batch_id = "b-qry-" + secrets.token_hex(3)
    experiment = "queries-" + secrets.token_hex(3)
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"case-{i}",
                    "prompt": f"Case {i}: help with {TOPICS[i % 3]}",
                    "metadata": {"topic": TOPICS[i % 3]},
                }
            )
            + "\n"
            for i in range(N)
        )
    )

    async def run(*args: str) -> dict | list | None:  # type: ignore[type-arg]
        done = await asyncio.to_thread(cli, *args)
        assert done.returncode == 0, (args, done.stderr)
        return json.loads(done.stdout) if "--json" in args else None

    await run(
        "run", str(suite), "--model", "evalbus-fake", "--batch-id", batch_id, "--experiment", experiment, "--json"
    )

    history = await run("history", "--experiment", experiment, "--json")
    assert isinstance(history, dict)
    [summary] = history["items"]
    assert (summary["batch_id"], summary["target"], summary["done"], summary["status"]) == (batch_id, N, N, "completed")
    assert summary["model"] == "evalbus-fake" and summary["experiment"] == experiment

    page = await run("samples", batch_id, "--filter", "metadata.topic=billing", "--sort=-score", "--json")
    assert isinstance(page, dict)
    assert sorted(s["index"] for s in page["items"]) == list(range(0, N, 3)) and page["total"] == N // 3
    scores = [s["overall_score"] for s in page["items"]]
    assert scores == sorted(scores, reverse=True)
    assert all(s["status"] == "scored" and s["case_id"] == f"case-{s['index']}" for s in page["items"])

    quality = await run("quality", batch_id, "--json")
    assert isinstance(quality, dict)
    assert quality["samples"] == N and quality["distributions"]["topic"] == {t: N // 3 for t in TOPICS}
    shown = await asyncio.to_thread(cli, "quality", batch_id)
    assert quality["rating"] in shown.stdout

    recorded = await answers(stack.database_url, batch_id)
    for fmt in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"export.{fmt}"
        await run("export", batch_id, "--format", fmt, "--out", str(out))
        if fmt == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        elif fmt == "csv":
            with out.open(newline="") as fh:
                rows = [{**r, "index": int(r["index"])} for r in csv.DictReader(fh)]
        else:
            rows = pq.read_table(out).to_pylist()
        assert {r["index"]: r["answer"] for r in rows} == recorded, fmt
