"""Recorder service: `faststream run --factory services.recorder.app:create_app`.

It writes every event in bulk, acks only after commit, and publishes progress and the
batch-completed event from a flush loop that reads committed rows.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

import orjson
from faststream import FastStream
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from contracts import subjects
from contracts.base import Event
from contracts.enums import BatchStatus
from contracts.events import EVENT_TYPES, BatchAccepted, BatchCompleted, PromptEvent, PromptFailed, PromptScored
from contracts.inputs import CancelBatchRequested, StartBatchRequested
from contracts.ops import BreakerStateChanged, DeadLetter
from contracts.quality import QualityReport
from contracts.reports import BatchReport, ResumeResult
from contracts.topology import RECORDER_BREAKERS, RECORDER_DEAD_LETTERS, RECORDER_EVENTS
from services.recorder import checks, quality, reporting, tables
from services.recorder.api import start_api
from services.recorder.dead_letters import from_advisory, record_dead_letters
from services.recorder.redrive import redrive_events, summary
from services.recorder.repository import record
from services.runtime.messaging.acks import settle, stream_seq
from services.runtime.messaging.connection import jetstream
from services.runtime.messaging.handling import Refusal, check_subject, handle_isolated, work_batch
from services.runtime.messaging.publishing import encode, publish_events
from services.runtime.messaging.service import consume, new_service
from services.runtime.settings import get_settings

log = logging.getLogger("evalbus.recorder")
SERVICE = "recorder"
BREAKERS_SETTLE_S = 2.0
BREAKER_FIELDS = {"service", "endpoint", "old_state", "new_state", "occurred_at"}
# Commands are the generator's to validate; the recorder does not store them. A completion is
# the recorder's own output, read back on its consumer: it stores nothing from it (a forged one
# on the subject changes no row), so it is passed by unread.
PASSED_BY = {
    (StartBatchRequested.entity, StartBatchRequested.verb),
    (CancelBatchRequested.entity, CancelBatchRequested.verb),
    (BatchCompleted.entity, BatchCompleted.verb),
}
# Batches whose prompt count is known, so most writes need no query to check their prompts
# (an accepted batch's total never changes); cleared when it grows past this.
TOTALS_CACHED = 10_000
BIGINT_MAX = 2**63 - 1


def parse_event(raw: Msg) -> Event | None:
    """The event of a message on the events stream, None for those the recorder passes by.
    ValueError (a dead letter) for anything it could not store or that is not what its subject
    says: the subject's batch and type must be the body's, a prompt's id its index's."""
    parts = raw.subject.split(".")
    key = (parts[4], parts[5]) if len(parts) == 6 else ("", "")
    if key in PASSED_BY:
        return None
    cls = EVENT_TYPES.get(key)
    if cls is None:
        raise ValueError(f"no event type for subject {raw.subject[:300]!r}")
    evt = cls.model_validate_json(raw.data)  # refuses what could not be stored (NUL, out-of-range numbers)
    check_subject(raw.subject, evt)
    if isinstance(evt, PromptEvent) and (problem := checks.wrong_prompt_id(evt)) is not None:
        raise ValueError(problem)
    return evt


class Recorder:
    def __init__(self, engine: AsyncEngine, before_report: Callable[[], Awaitable[None]] | None = None) -> None:
        self.engine = engine
        self._before_report = before_report
        self.dirty: set[str] = set()
        self._last_moved: dict[str, tuple[tuple[int, int, int, int], float]] = {}
        # Prompts each running batch had left at its last snapshot, less the finishing events
        # written since (an estimate: a redelivered event makes it low, which only checks early).
        self._left: dict[str, int] = {}
        self.may_have_finished: set[str] = set()
        self.finishing = asyncio.Event()
        self._totals: dict[str, int | None] = {}

    async def screen(self, events: Sequence[Event | None]) -> list[Refusal | None]:
        """Prompt events are taken only for prompts their batch has (one query for the batches
        not seen yet). A prompt event whose batch has no row yet is deferred, not refused: the
        batch's `accepted` precedes it in the stream but may be in another replica's write still
        being committed (or in a write being retried); it comes back with a growing delay and, if
        its batch still has no row after a few deliveries (worker.DEFERRED_DELIVERIES, ~30 s),
        ends as a dead letter."""
        wanted = {e.batch_id for e in events if isinstance(e, PromptEvent)} - self._totals.keys()
        if wanted:
            async with self.engine.connect() as conn:
                found = await checks.batch_totals(conn, wanted)
            if len(self._totals) + len(found) > TOTALS_CACHED:
                self._totals.clear()
            # A rejected id may be accepted later: only accepted totals are kept.
            self._totals.update({b: n for b, n in found.items() if n is not None})
        else:
            found = {}
        here = {e.batch_id: e.total_prompts for e in events if isinstance(e, BatchAccepted)}
        verdicts: list[Refusal | None] = []
        for evt in events:
            if not isinstance(evt, PromptEvent):
                verdicts.append(None)
                continue
            known = evt.batch_id in self._totals or evt.batch_id in found
            total = self._totals.get(evt.batch_id, found.get(evt.batch_id))
            if total is None and evt.batch_id in here:  # accepted in this very write
                known, total = True, here[evt.batch_id]
            if not known:
                verdicts.append(Refusal(f"batch {evt.batch_id!r} not recorded yet", retry=True))
                continue
            reason = checks.prompt_refusal(evt, total, known)
            verdicts.append(None if reason is None else Refusal(reason))
        return verdicts

    async def write(self, events: list[Event | None]) -> Sequence[Event]:
        mine = [e for e in events if e is not None]
        if mine:
            async with self.engine.begin() as conn:
                touched = await record(conn, mine)
            # After the await: `self.dirty |= await ...` would update the set flush() swapped out.
            self.dirty |= touched
            self._count_down(mine)
        return []

    def _count_down(self, events: list[Event]) -> None:
        """Flag batches these events may have finished, so completion is not left to the next tick."""
        finished = Counter(e.batch_id for e in events if isinstance(e, PromptScored | PromptFailed))
        for batch_id, n in finished.items():
            left = self._left.get(batch_id)
            if left is not None:
                self._left[batch_id] = left = left - n
            if left is None or left <= 0:
                self.may_have_finished.add(batch_id)
                self.finishing.set()

    async def mark_running_dirty(self) -> None:
        async with self.engine.connect() as conn:
            self.dirty |= set(await reporting.running_batches(conn))

    async def flush(self, js: JetStreamContext, only_finishing: bool = False) -> None:
        """Publish progress (and completion) of the batches written to; `only_finishing`: of those
        that may just have finished, between the throttled snapshots."""
        self.finishing.clear()
        if only_finishing:
            batch_ids = self.dirty & self.may_have_finished
            self.dirty -= batch_ids
        else:
            batch_ids, self.dirty = self.dirty, set()
        self.may_have_finished.clear()
        for batch_id in list(batch_ids):  # a snapshot: writes may add to the sets meanwhile
            try:
                await self._flush_one(js, batch_id)
            except Exception as exc:
                log.warning("progress for %s failed (%r); will retry", batch_id, exc)
                self.dirty.add(batch_id)

    async def resume(self, js: JetStreamContext, batch_id: str, token: str) -> ResumeResult | None:
        """Send every unfinished prompt of a running batch on again, rebuilt from its rows
        (None: no such batch)."""
        async with self.engine.connect() as conn:
            events = await redrive_events(conn, batch_id, token)
        if events is None:
            return None
        for start in range(0, len(events), 1000):
            await publish_events(js, events[start : start + 1000])
        if events:
            log.warning("re-drove %d prompts of batch %s (%s)", len(events), batch_id, token)
        return ResumeResult(batch_id=batch_id, redriven=len(events), by_event=summary(events))

    async def check_stalled(self, js: JetStreamContext, stall_after_s: float) -> None:
        """Re-drive running batches whose committed state has not moved for `stall_after_s`."""
        now = time.monotonic()
        async with self.engine.connect() as conn:
            running = await reporting.running_batches(conn)
            snapshots = {b: await reporting.progress(conn, b) for b in running}
        for batch_id, prog in snapshots.items():
            if prog is None:
                continue
            key = (prog.responded, prog.judged, prog.scored, prog.failed)
            seen = self._last_moved.get(batch_id)
            if seen is None or seen[0] != key:
                self._last_moved[batch_id] = (key, now)
            elif now - seen[1] >= stall_after_s:
                self._last_moved[batch_id] = (key, now)
                try:  # one batch whose rows cannot be re-driven must not stop the others'
                    await self.resume(js, batch_id, f"stall-{int(time.time())}")
                except Exception as exc:
                    log.warning("could not re-drive stalled batch %s: %r", batch_id, exc)
        for gone in set(self._last_moved) - set(snapshots):
            del self._last_moved[gone]

    async def _flush_one(self, js: JetStreamContext, batch_id: str) -> None:
        async with self.engine.connect() as conn:
            prog = await reporting.progress(conn, batch_id)
        if prog is None:
            return
        finishing = prog.status is BatchStatus.RUNNING and prog.total > 0 and prog.done >= prog.total
        if prog.status is BatchStatus.RUNNING and not finishing:
            self._left[batch_id] = prog.total - prog.done
        else:
            self._left.pop(batch_id, None)
        if finishing:
            if self._before_report is not None:
                await self._before_report()
            status = reporting.final_status(prog.scored, prog.failed, prog.cancelled)
            prog = prog.model_copy(update={"status": status})
            rep, qual = await asyncio.gather(self._report(batch_id, status), self._quality(batch_id))
            assert rep is not None
        await js.publish(subjects.progress(batch_id), encode(prog), stream=subjects.STREAM_PROGRESS, timeout=10)
        if finishing:
            # Publish before marking the row: a crash in between re-finds the batch running and
            # publishes again under the same Nats-Msg-Id.
            await publish_events(js, [BatchCompleted(batch_id=batch_id, status=rep.status, report=rep, quality=qual)])
            async with self.engine.begin() as conn:
                if qual is not None:
                    await quality.store_quality(conn, qual)
                await reporting.store_final(conn, rep)
            log.info("batch %s finished: %s (%d ok, %d failed)", batch_id, rep.status, rep.completed, rep.failed)

    # On connections of their own, so the two run side by side when a batch finishes.
    async def _report(self, batch_id: str, status: BatchStatus) -> BatchReport | None:
        async with self.engine.connect() as conn:
            return await reporting.report(conn, batch_id, status)

    async def _quality(self, batch_id: str) -> QualityReport | None:
        async with self.engine.connect() as conn:
            return await quality.compute_quality(conn, batch_id)


def create_app() -> FastStream:
    settings = get_settings()
    broker, app = new_service(SERVICE, settings)
    # command_timeout: a paused or partitioned database surfaces as an error (and a retry), not a hang.
    engine = create_async_engine(
        settings.require_database_url(),
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        connect_args={"command_timeout": 20},
        # orjson for JSONB columns: the stdlib encoder was a tenth of the recorder's write path.
        json_serializer=lambda value: orjson.dumps(value).decode(),
        json_deserializer=orjson.loads,
    )

    async def breakers_recorded() -> None:
        """Breaker events travel on their own stream: let those already published reach the rows a
        final report counts (they are few; at most a short wait if that consumer is behind)."""
        js = jetstream(broker)
        deadline = time.monotonic() + BREAKERS_SETTLE_S
        while time.monotonic() < deadline:
            try:
                info = await js.consumer_info(RECORDER_BREAKERS.stream, RECORDER_BREAKERS.durable)
            except Exception as exc:
                log.warning("could not look at the breaker consumer: %r", exc)
                return
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.02)

    recorder = Recorder(engine, breakers_recorded)
    tasks: list[asyncio.Task[None]] = []

    async def on_events(raws: list[Msg]) -> None:
        await work_batch(
            jetstream(broker),
            SERVICE,
            raws,
            parse_event,
            recorder.write,
            screen=recorder.screen,
            transient=checks.database_down,
        )

    async def on_dead_letters(raws: list[Msg]) -> None:
        js = jetstream(broker)
        letters: list[tuple[Msg, DeadLetter]] = []
        for raw in raws:
            try:
                if raw.subject.startswith("$JS.EVENT.ADVISORY."):
                    letter = await from_advisory(js, raw)
                else:
                    letter = DeadLetter.model_validate_json(raw.data)
                if letter is not None and letter.stream_seq is not None and not 0 <= letter.stream_seq <= BIGINT_MAX:
                    raise ValueError(f"stream_seq {letter.stream_seq} out of range")
            except (ValidationError, ValueError, KeyError, TypeError) as exc:
                log.warning("unusable message on the dead-letter stream (%s): %r", raw.subject[:300], exc)
                await settle([raw], ok=True)
                continue
            except Exception as exc:  # the original could not be read now (the broker): later
                log.warning("could not read the message behind %s (%r); will retry", raw.subject[:300], exc)
                await settle([raw], ok=False)
                continue
            if letter is None:
                await settle([raw], ok=True)
            else:
                letters.append((raw, letter))

        async def store(batch: list[DeadLetter]) -> None:
            async with engine.begin() as conn:
                touched = await record_dead_letters(conn, batch)
            recorder.dirty |= touched

        await handle_isolated(SERVICE, letters, store, checks.database_down)

    consume(
        app,
        broker,
        SERVICE,
        RECORDER_DEAD_LETTERS,
        on_batch=on_dead_letters,
        batch_size=256,
        max_wait_s=settings.fetch_timeout_s,
    )

    async def on_breaker_events(raws: list[Msg]) -> None:
        rows: list[tuple[Msg, dict[str, object]]] = []
        for raw in raws:
            try:
                evt = BreakerStateChanged.model_validate_json(raw.data)
            except (ValidationError, ValueError) as exc:
                log.warning("unusable breaker event (%s): %r", raw.subject[:300], exc)
                await settle([raw], ok=True)
                continue
            rows.append((raw, {"stream_seq": stream_seq(raw), **evt.model_dump(include=BREAKER_FIELDS)}))

        async def store(batch: list[dict[str, object]]) -> None:
            async with engine.begin() as conn:
                await conn.execute(insert(tables.breaker_events).on_conflict_do_nothing(), batch)

        await handle_isolated(SERVICE, rows, store, checks.database_down)

    consume(
        app,
        broker,
        SERVICE,
        RECORDER_BREAKERS,
        on_batch=on_breaker_events,
        batch_size=256,
        max_wait_s=settings.fetch_timeout_s,
    )

    async def flush_forever() -> None:
        last_stall_check = last_tick = time.monotonic()
        while True:
            # Snapshots are throttled; a batch that may just have finished is checked at once.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last_tick + settings.progress_interval_s - time.monotonic())):
                    await recorder.finishing.wait()
            if time.monotonic() - last_tick >= settings.progress_interval_s:
                last_tick = time.monotonic()
                await recorder.flush(jetstream(broker))
            else:
                await recorder.flush(jetstream(broker), only_finishing=True)
            if time.monotonic() - last_stall_check >= min(30.0, settings.stall_after_s / 4):
                last_stall_check = time.monotonic()
                try:
                    await recorder.check_stalled(jetstream(broker), settings.stall_after_s)
                except Exception as exc:
                    log.warning("stall check failed: %r", exc)

    @app.after_startup
    async def started() -> None:
        # Batches left running by a previous recorder get their progress and completion re-checked.
        while True:
            try:
                await recorder.mark_running_dirty()
                break
            except Exception as exc:
                log.warning("database not reachable yet (%r); retrying", exc)
                await asyncio.sleep(2)
        api = await start_api(
            broker.connection, engine, lambda batch_id, token: recorder.resume(jetstream(broker), batch_id, token)
        )
        app.context.set_global("micro", api)
        tasks.append(asyncio.create_task(flush_forever()))

    consume(
        app,
        broker,
        SERVICE,
        RECORDER_EVENTS,
        on_batch=on_events,
        batch_size=settings.fetch_batch,
        max_wait_s=settings.fetch_timeout_s,
    )

    @app.on_shutdown
    async def stopping() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @app.after_shutdown
    async def closed() -> None:
        await engine.dispose()

    return app
