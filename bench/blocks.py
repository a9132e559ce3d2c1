"""The ceiling: raw building blocks measured on the same kind of nats-server and PostgreSQL.

- JetStream pipelined publish (`publish_async`, 1024 in flight) of a ~500-byte event,
- JetStream pull consume (`fetch(256)` + `msg.ack()`) of the same messages,
- asyncpg bulk insert: `executemany` (1,000 rows per transaction) and `copy_records_to_table`
  (10,000 rows per call).

Each figure comes with the CPU µs per item of this (client) process and of the server.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import nats
import orjson
from nats.js.api import StorageType

from bench.measure import Target, bench_process, cpu_seconds

STREAM = "BENCH_BLOCKS"
SUBJECT = "bench.blocks.event"
WINDOW = 1024
FETCH = 256
EXECUTEMANY_BATCH = 1000
COPY_BATCH = 10_000


def event_payload(i: int = 0) -> bytes:
    """About 500 bytes of JSON, shaped like a prompt event."""
    body = {
        "event_id": f"6f1c2d7e-8a43-4c0b-9a55-{i:012d}",
        "batch_id": "b-20250101T000000-abcdef",
        "prompt_id": f"b-20250101T000000-abcdef-{i:06d}",
        "index": i,
        "occurred_at": "2025-01-01T00:00:00.000000Z",
        "schema_version": 1,
        "overall_score": 7.4,
        "passed": True,
        "criteria_passed": {"helpfulness": True, "accuracy": True, "clarity": True, "safety": True},
        "reasons": ["completeness 6 < 7"],
        "padding": "x" * 120,
    }
    return orjson.dumps(body)


class Meter:
    """Wall time and CPU of the client (this process) and of one server over a block."""

    def __init__(self, server: Target) -> None:
        self.server = server
        self.client = bench_process()

    async def run(self, n: int, body: Callable[[], Awaitable[None]]) -> dict[str, float]:
        c0, s0, t0 = cpu_seconds(self.client), cpu_seconds(self.server), time.perf_counter()
        await body()
        wall = time.perf_counter() - t0
        c1, s1 = cpu_seconds(self.client), cpu_seconds(self.server)
        return {
            "per_s": round(n / wall, 1),
            "wall_s": round(wall, 3),
            "client_cpu_us": round((c1 - c0) * 1e6 / n, 2),
            "server_cpu_us": round((s1 - s0) * 1e6 / n, 2),
        }


async def jetstream_blocks(nats_url: str, server: Target, n: int) -> dict[str, dict[str, float]]:
    nc = await nats.connect(nats_url, name="evalbus-bench-blocks")
    meter = Meter(server)
    try:
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        await js.add_stream(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE)
        payloads = [event_payload(i) for i in range(n)]

        async def publish() -> None:
            for payload in payloads:
                await js.publish_async(SUBJECT, payload)
            await js.publish_async_completed()

        async def consume() -> None:
            sub = await js.pull_subscribe(SUBJECT, durable="bench-pull", stream=STREAM)
            got = 0
            while got < n:
                msgs = await sub.fetch(FETCH, timeout=5)
                for msg in msgs:
                    await msg.ack()
                got += len(msgs)
            await sub.unsubscribe()

        out = {
            f"jetstream publish_async (window {WINDOW})": await meter.run(n, publish),
            f"jetstream pull fetch({FETCH}) + ack": await meter.run(n, consume),
        }
        await js.delete_stream(STREAM)
        return out
    finally:
        await nc.close()


async def postgres_blocks(database_url: str, server: Target, n: int) -> dict[str, dict[str, float]]:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    meter = Meter(server)
    columns = ("prompt_id", "batch_id", "idx", "score", "passed", "reasoning")
    rows: list[tuple[Any, ...]] = [
        (f"b-bench-{i:07d}", "b-bench", i, 7.5, True, "The answer names the refund and its timeline.") for i in range(n)
    ]
    try:
        # A logged table with a primary key, as the recorder's are: WAL, index and commits are part of the price.
        await conn.execute("DROP TABLE IF EXISTS bench_rows")
        await conn.execute(
            "CREATE TABLE bench_rows (prompt_id text PRIMARY KEY, batch_id text NOT NULL,"
            " idx int NOT NULL, score float8, passed bool, reasoning text)"
        )
        insert = f"INSERT INTO bench_rows ({', '.join(columns)}) VALUES ($1, $2, $3, $4, $5, $6)"

        async def executemany() -> None:
            for start in range(0, n, EXECUTEMANY_BATCH):
                async with conn.transaction():
                    await conn.executemany(insert, rows[start : start + EXECUTEMANY_BATCH])

        async def copy() -> None:
            for start in range(0, n, COPY_BATCH):
                await conn.copy_records_to_table(
                    "bench_rows", records=rows[start : start + COPY_BATCH], columns=columns
                )

        out = {f"asyncpg executemany ({EXECUTEMANY_BATCH} rows/txn)": await meter.run(n, executemany)}
        await conn.execute("TRUNCATE bench_rows")
        out[f"asyncpg copy_records_to_table ({COPY_BATCH} rows/call)"] = await meter.run(n, copy)
        await conn.execute("DROP TABLE bench_rows")
        return out
    finally:
        await conn.close()


def measure_blocks(nats_url: str, nats_pid: int, database_url: str, postgres_pid: int, n: int) -> dict[str, Any]:
    """One trial of every block; the caller repeats and summarises."""

    async def both() -> dict[str, Any]:
        js = await jetstream_blocks(nats_url, Target("nats-server", nats_pid), n)
        pg = await postgres_blocks(database_url, Target("postgres", postgres_pid), n * 2)
        return {**js, **pg}

    return asyncio.run(both())
