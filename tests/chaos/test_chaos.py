"""Chaos: a batch against a flaky model while services are killed, the broker restarts and the
database pauses. Invariants are checked from PostgreSQL, the stream and the fake model's log.

`make test` runs a fitting size (EVALBUS_CHAOS_PROMPTS, default 300, database paused 3 s);
`make chaos` runs 2,000 prompts with the database paused for 20 s.
"""

import asyncio
import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.inputs import BatchConfig, StartBatchRequested
from evalbus.client import publish_start, upload_suite
from evalbus.stack import Stack
from infra.nats_topology import apply_topology
from infra.processes import SERVICES

pytestmark = pytest.mark.chaos
N = int(os.environ.get("EVALBUS_CHAOS_PROMPTS", "300"))
SEED = int(os.environ.get("EVALBUS_CHAOS_SEED", str(int(time.time()))))
ACK_WAIT_S = 4.0
# Slow enough that the batch is still running while every fault lands: ~40 s of model time at
# 100 ms a call (the faults take 30-45 s with `make chaos`'s 20 s database pause).
CONCURRENCY = max(2, N // 400)
MAX_RETRIES = 2
PG_PAUSE_S = float(os.environ.get("EVALBUS_CHAOS_PG_PAUSE_S", "3"))
# A stall is a batch that writes no new row (response, score, failure) for NO_PROGRESS_S: longer
# than any pause the faults cause while other prompts wait (the breaker's 30 s reset after the
# runner is stopped, an ack wait, a nak delay of 2 s doubling per delivery: 64 s at the sixth),
# whatever the machine's speed. A loaded 2-core machine is slow, not stalled: the cap ends a crawl.
NO_PROGRESS_S = 90.0
FINISH_CAP_S = 200.0


def write_suite(path: Path, n: int) -> Path:
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"Chaos case {i}: where is order VL-{i}?", "metadata": {"i": i}}) + "\n")
    return path


def pause_postgres(stack: Stack, sig: int) -> None:
    assert stack.postgres and stack.postgres.proc
    root = psutil.Process(stack.postgres.proc.pid)
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a backend that ended meanwhile (its connection cut)
            proc.send_signal(sig)


async def query(db: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_async_engine(db)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


# Rows the pipeline writes as a batch moves (the batch row's own counts are written only at its end).
PROGRESS_SQL = (
    "SELECT b.status, (SELECT count(*) FROM responses r WHERE r.batch_id = :b)"
    " + (SELECT count(*) FROM scores s WHERE s.batch_id = :b) + (SELECT count(*) FROM failures f WHERE f.batch_id = :b)"
    " FROM batches b WHERE b.batch_id = :b"
)


async def wait_terminal(
    db: str, batch_id: str, no_progress_s: float = NO_PROGRESS_S, cap_s: float = FINISH_CAP_S
) -> str:
    """The batch's final status; fails if it writes no new row for `no_progress_s`."""
    started = moved_at = time.monotonic()
    rows_written = -1
    while time.monotonic() - moved_at < no_progress_s:
        assert time.monotonic() - started < cap_s, (
            f"batch {batch_id} still running after {cap_s}s ({rows_written} rows)"
        )
        try:
            rows = await query(db, PROGRESS_SQL, b=batch_id)
        except Exception:  # the database may be paused right now
            rows = []
        if rows and rows[0][0] != "running":
            return str(rows[0][0])
        if rows and int(str(rows[0][1])) != rows_written:
            rows_written, moved_at = int(str(rows[0][1])), time.monotonic()
        await asyncio.sleep(0.5)
    raise AssertionError(f"batch {batch_id} stalled: {rows_written} rows written, none more for {no_progress_s}s")


async def start_stack(stack: Stack, fake_model: dict[str, str]) -> None:
    """Servers with a quick redelivery after a kill, the fake model, and services that retry fast."""
    await asyncio.to_thread(stack.start_servers)
    await apply_topology(stack.nats_url, ack_wait_s=ACK_WAIT_S)
    await asyncio.to_thread(stack.start_fake_model, fake_model)
    stack.start_services(extra_env={"EVALBUS_RETRY_BASE_S": "0.05", "EVALBUS_RETRY_MAX_S": "0.5"})


async def start_batch(nc: nats.NATS, batch_id: str, suite: Path, **config: Any) -> None:
    """The suite uploaded and the batch started against the fake model and its judge."""
    cfg = BatchConfig(model="evalbus-fake", judge_model="evalbus-fake-judge", **config)
    start = StartBatchRequested(batch_id=batch_id, config=cfg, suite=await upload_suite(nc, batch_id, suite))
    await publish_start(nc, start)


async def restart_broker(stack: Stack, *, kill: bool, down_s: float) -> None:
    """nats-server stopped (kill -9 or a clean stop) and started again on its port and store."""
    assert stack.nats
    stack.nats.stop(kill=kill)
    await asyncio.sleep(down_s)
    await asyncio.to_thread(stack.nats.start)


@dataclass(frozen=True)
class Accounted:
    """A finished batch's prompts as rows: scored, failed (never scored), and its stored totals."""

    scored: int
    failed: int
    totals: tuple[object, ...]


async def accounted(db: str, batch_id: str) -> Accounted:
    scored = (await query(db, "SELECT count(*) FROM scores WHERE batch_id = :b", b=batch_id))[0][0]
    failed = (
        await query(
            db,
            "SELECT count(DISTINCT prompt_id) FROM failures f WHERE batch_id = :b AND NOT EXISTS"
            " (SELECT 1 FROM scores s WHERE s.prompt_id = f.prompt_id)",
            b=batch_id,
        )
    )[0][0]
    totals = (
        await query(
            db,
            "SELECT completed_prompts, failed_prompts, total_prompts FROM batches WHERE batch_id = :b",
            b=batch_id,
        )
    )[0]
    return Accounted(int(str(scored)), int(str(failed)), totals)


async def test_nothing_lost_nothing_twice_under_faults(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"chaos seed {SEED}, {N} prompts")
    stack = Stack(tmp_path / "chaos")
    log_path = tmp_path / "model-requests.jsonl"
    batch_id = f"b-chaos-{SEED % 100000}"
    events: list[str] = []
    try:
        await chaos_run(stack, rng, log_path, batch_id, events)
    finally:
        stack.stop()
        for p in (stack.data_dir / "logs").glob("*.log"):
            if "Traceback" in p.read_text():
                print(f"--- {p.name}\n{p.read_text()[-2500:]}")


async def chaos_run(stack: Stack, rng: random.Random, log_path: Path, batch_id: str, events: list[str]) -> None:
    await start_stack(stack, {
        "latency_ms": "80", "jitter_ms": "40", "error_rate_500": "0.05", "rate_limit_rate": "0.02",
        "retry_after_s": "0.2", "hang_rate": "0.01", "hang_s": "30", "malformed_rate": "0.01",
        "seed": str(SEED), "request_log": str(log_path),
    })  # fmt: skip
    nc = await nats.connect(stack.nats_url, max_reconnect_attempts=-1)
    suite = write_suite(log_path.with_name("suite.jsonl"), N)
    await start_batch(nc, batch_id, suite, concurrency=CONCURRENCY, timeout_s=1.5, max_retries=MAX_RETRIES)
    t0 = time.monotonic()
    # a poison message the test injects: the only thing allowed in the dead-letter stream
    await nc.jetstream().publish(
        subjects.batch_event(batch_id, "prompt", "responded"), b"poison", stream=subjects.STREAM_EVENTS
    )
    await nc.close()

    # faults, in a random order, while the batch runs
    faults = [*SERVICES, "nats", "postgres", "stop-runner"]
    rng.shuffle(faults)
    outage: RecorderBacklog | None = None
    outage_redriven = 0
    hit_running = 0
    seen_states: list[str] = []
    for fault in faults:
        await asyncio.sleep(rng.uniform(0.2, 0.8))
        events.append(fault)
        if fault != "postgres":  # (querying a paused database would hang the test)
            state = await query(stack.database_url, "SELECT status FROM batches WHERE batch_id = :b", b=batch_id)
            hit_running += not state or state[0][0] == "running"  # no row yet: not even recorded
            seen_states.append(f"{fault}:{state[0][0] if state else 'none'}@{time.monotonic() - t0:.1f}")
        if fault == "nats":
            await restart_broker(stack, kill=True, down_s=1)
        elif fault == "postgres":
            await recorder_consuming(stack.nats_url)  # an outage of a recorder at work, not one still starting
            pause_postgres(stack, signal.SIGSTOP)
            await asyncio.sleep(PG_PAUSE_S)
            outage = await recorder_backlog(stack.nats_url)  # fetched during the outage, not yet committed
            log_from = recorder_log_size(stack)
            # Then a failover's other half: every connection to the database is cut (a SIGTERM the
            # paused backends take as they resume), so the writes in flight roll back.
            cut_database_connections(stack)
            pause_postgres(stack, signal.SIGCONT)
            outage_redriven = await recorder_redeliveries_after(stack, outage, log_from)
        elif fault == "stop-runner":
            stack.kill("chat_runner", signal.SIGSTOP)  # past the ack wait: its work is redelivered
            await asyncio.sleep(ACK_WAIT_S + 1)
            stack.kill("chat_runner", signal.SIGCONT)
        else:
            stack.kill(fault)
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            stack.restart(fault)
    healed = time.monotonic()
    status = await wait_terminal(stack.database_url, batch_id)
    finish_s = time.monotonic() - healed
    db = stack.database_url

    # no loss: every prompt terminal; no duplicates: natural keys hold and totals equal rows
    prompts = (await query(db, "SELECT count(*) FROM prompts WHERE batch_id = :b", b=batch_id))[0][0]
    done = await accounted(db, batch_id)
    scored, failed, totals = done.scored, done.failed, done.totals
    responses = (await query(db, "SELECT count(*) FROM responses WHERE batch_id = :b", b=batch_id))[0][0]
    judgments = (await query(db, "SELECT count(*) FROM judgments WHERE batch_id = :b", b=batch_id))[0][0]
    judged = (await query(db, "SELECT count(*) FROM judge_calls WHERE batch_id = :b", b=batch_id))[0][0]
    categories = dict(
        await query(db, "SELECT category, count(*) FROM failures WHERE batch_id = :b GROUP BY category", b=batch_id)
    )
    lost = N - (scored + failed)
    assert hit_running >= len(faults) - 1, f"only {hit_running} faults hit the running batch: {seen_states}"
    assert prompts == N and lost == 0, f"lost {lost}"
    assert status in ("completed", "partial_failure")
    assert totals == (scored, failed, N)
    assert judgments == 5 * judged
    assert scored <= responses <= N

    # bounded cost: model calls per prompt and stage
    calls = Counter()
    for line in log_path.read_text().splitlines():
        rec = json.loads(line)
        # a batched judge call names every prompt it grades, comma-separated
        for prompt_id in rec.get("prompt_id", "").split(","):
            if prompt_id.startswith(batch_id):
                calls[(prompt_id, rec.get("stage"))] += 1
    kills = len(faults)
    bound = (1 + MAX_RETRIES) * (1 + kills)  # each redelivery may retry in full
    # an answer whose batched judge call was unusable is graded again alone: twice the calls
    worst_by_stage = {stage: max(n for (_, st), n in calls.items() if st == stage) for _, stage in calls}
    for stage, worst_here in worst_by_stage.items():
        allowed = 2 * bound if stage == "judge" else bound
        assert worst_here <= allowed, f"a prompt's {stage} stage was called {worst_here} times (bound {allowed})"
    worst = max(calls.values())

    # the dead-letter stream holds only the injected poison
    nc = await nats.connect(stack.nats_url)
    info = await nc.jetstream().stream_info(subjects.STREAM_DLQ)
    letters = (
        [
            json.loads((await nc.jetstream().get_msg(subjects.STREAM_DLQ, seq)).data)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
        if info.state.messages
        else []
    )
    await nc.close()
    assert letters and all(dl.get("payload") == "poison" for dl in letters), letters

    # The database outage: what the recorder had fetched and not committed when PostgreSQL came
    # back was acked only after its commit (redelivered first if a write failed), and recorded
    # once: every message up to the last one delivered then is acked, and the totals equal the rows.
    assert outage is not None
    settled = await recorder_settled(stack.nats_url)
    assert settled.ack_floor_seq >= outage.delivered_seq, (outage, settled)
    print(
        f"database paused {PG_PAUSE_S:g} s, then its connections cut: the recorder held {outage.held} fetched"
        f" events uncommitted; {outage_redriven} of its batch writes were rolled back and redelivered; every"
        f" event up to stream seq {outage.delivered_seq} acked after commit (ack floor {settled.ack_floor_seq}),"
        f" recorded once (totals {totals} = rows)"
    )

    print(
        "\n| scenario | prompts | lost | duplicated | model calls | worst calls/stage | failures | time to finish |"
        "\n|---|---|---|---|---|---|---|---|"
        f"\n| {'→'.join(events)} | {N} | {lost} | 0 | {sum(calls.values())} | {worst} (bound {bound}) |"
        f" {categories} | {finish_s:.1f} s |"
    )
    assert stack.check_alive() == []


RESTART_PROMPTS = 300  # ~8 s of model time at 4 calls in flight: long enough to restart in


async def test_broker_restarts_mid_batch_end_terminal_every_time(tmp_path: Path) -> None:
    """nats-server restarts (kill -9, clean stop, kill -9) each in the middle of a batch: every
    batch still ends, with every prompt accounted for once, and no service has exited."""
    stack = Stack(tmp_path / "restarts")
    try:
        await start_stack(stack, {"latency_ms": "100", "jitter_ms": "20", "seed": str(SEED)})
        await asyncio.to_thread(stack.wait_healthy, 120)
        suite = write_suite(tmp_path / "suite.jsonl", RESTART_PROMPTS)
        for round_no, kill in enumerate((True, False, True)):
            batch_id = f"b-restart-{SEED % 100000}-{round_no}"
            nc = await nats.connect(stack.nats_url)
            await start_batch(nc, batch_id, suite, concurrency=4, timeout_s=5, max_retries=2)
            await nc.close()
            await wait_some_done(stack.database_url, batch_id)  # mid-batch: recorded, running, not done
            await restart_broker(stack, kill=kill, down_s=0.5)
            status = await wait_terminal(stack.database_url, batch_id)
            done = await accounted(stack.database_url, batch_id)
            how = "kill -9" if kill else "stop"
            print(f"restart {round_no} ({how}): {status}, {done.scored} scored, {done.failed} failed")
            assert status in ("completed", "partial_failure")
            assert done.totals == (done.scored, done.failed, RESTART_PROMPTS)
        assert stack.check_alive() == []
    finally:
        stack.stop()


async def wait_some_done(db: str, batch_id: str, timeout_s: float = 120.0) -> None:
    """Until the batch is recorded and has run a moment (a restart lands mid-batch)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = await query(db, "SELECT status FROM batches WHERE batch_id = :b", b=batch_id)
        if rows:
            await asyncio.sleep(1.5)
            rows = await query(db, "SELECT status FROM batches WHERE batch_id = :b", b=batch_id)
            assert rows[0][0] == "running", f"batch {batch_id} ended before the restart: raise RESTART_PROMPTS"
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not recorded in {timeout_s}s")


@dataclass(frozen=True)
class RecorderBacklog:
    """The recorder's durable on the events stream at one moment."""

    held: int  # delivered, not acked: fetched, not committed yet
    redelivered: int  # of those, delivered more than once
    delivered_seq: int  # the last stream sequence delivered
    ack_floor_seq: int  # every message up to here is acked


async def recorder_backlog(nats_url: str) -> RecorderBacklog:
    from contracts.topology import RECORDER_EVENTS

    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream(timeout=5).consumer_info(RECORDER_EVENTS.stream, RECORDER_EVENTS.durable)
    finally:
        await nc.close()
    return RecorderBacklog(
        held=info.num_ack_pending or 0,
        redelivered=info.num_redelivered or 0,
        delivered_seq=(info.delivered.stream_seq or 0) if info.delivered else 0,
        ack_floor_seq=(info.ack_floor.stream_seq or 0) if info.ack_floor else 0,
    )


async def recorder_consuming(nats_url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not (await recorder_backlog(nats_url)).delivered_seq:
        assert time.monotonic() < deadline, f"the recorder took nothing in {timeout_s}s"
        await asyncio.sleep(0.2)


async def recorder_settled(nats_url: str, timeout_s: float = 60.0) -> RecorderBacklog:
    """The recorder's durable once it holds nothing (the batch is terminal: late messages drain)."""
    deadline = time.monotonic() + timeout_s
    while (state := await recorder_backlog(nats_url)).held and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    return state


REDELIVERED_WRITE = "recorder failed on a batch of"  # services/runtime/messaging/handling.py's log line


def recorder_log_size(stack: Stack) -> int:
    path = stack.data_dir / "logs" / "recorder.log"
    return path.stat().st_size if path.exists() else 0


def cut_database_connections(stack: Stack) -> None:
    """SIGTERM every client backend of the evalbus database (pg_terminate_backend's signal)."""
    assert stack.postgres and stack.postgres.proc
    for proc in psutil.Process(stack.postgres.proc.pid).children():
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith("postgres: ") and " evalbus " in f"{title} ":
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGTERM)


async def recorder_redeliveries_after(
    stack: Stack, outage: RecorderBacklog, log_from: int, timeout_s: float = 60.0
) -> int:
    """Once every event delivered before the outage ended is acked (its write committed), the
    recorder's batch writes that failed since and were left to be redelivered."""
    deadline = time.monotonic() + timeout_s
    while (await recorder_backlog(stack.nats_url)).ack_floor_seq < outage.delivered_seq:
        assert time.monotonic() < deadline, f"the recorder did not commit what it held in {timeout_s}s: {outage}"
        await asyncio.sleep(0.2)
    with (stack.data_dir / "logs" / "recorder.log").open("rb") as fh:
        fh.seek(log_from)
        return fh.read().decode(errors="replace").count(REDELIVERED_WRITE)
