"""The batch tracker: screens and writes events, counts down the prompts each running batch has
left, and publishes progress and the batch-completed event from committed rows."""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from contracts import subjects
from contracts.base import Event
from contracts.enums import BatchStatus
from contracts.events import BatchAccepted, BatchCompleted, PromptFailed, PromptScored
from contracts.quality import QualityReport
from contracts.reports import BatchProgress, BatchReport
from services.recorder import checks, quality, reporting
from services.recorder.repository import record, store_final, store_quality
from services.runtime.messaging.handling import Refusal
from services.runtime.messaging.publishing import JetStreamPublisher, encode

log = logging.getLogger("evalbus.recorder")
# Batches whose prompt count is known, so most writes need no query to check their prompts
# (an accepted batch's total never changes); cleared when it grows past this.
TOTALS_CACHED = 10_000
RECOVER_RETRY_S = 2.0


class Settling(Protocol):
    """Something a final report waits on before it counts (the breaker events' own consumer)."""

    async def settled(self) -> None: ...


def screen_verdicts(events: Sequence[Event | None], recorded: Mapping[str, int | None]) -> list[Refusal | None]:
    """Each event's verdict, given the prompts of each `recorded` batch (None: rejected; absent:
    no row yet). A batch accepted among `events` counts as recorded with its total."""
    here = {e.batch_id: e.total_prompts for e in events if isinstance(e, BatchAccepted)}
    verdicts: list[Refusal | None] = []
    for evt in events:
        if not isinstance(evt, checks.PROMPT_LEVEL):
            verdicts.append(None)
            continue
        known = evt.batch_id in recorded
        total = recorded.get(evt.batch_id)
        if total is None and evt.batch_id in here:  # accepted in this very write
            known, total = True, here[evt.batch_id]
        if not known:
            verdicts.append(Refusal(f"batch {evt.batch_id!r} not recorded yet", retry=True))
            continue
        reason = checks.prompt_refusal(evt, total, known)
        verdicts.append(None if reason is None else Refusal(reason))
    return verdicts


class Tracker:
    def __init__(self, engine: AsyncEngine, publisher: JetStreamPublisher, breakers: Settling | None = None) -> None:
        self.engine = engine
        self.publisher = publisher
        self.breakers = breakers
        self.dirty: set[str] = set()
        # Prompts each running batch had left at its last snapshot, less the finishing events
        # written since (an estimate: a redelivered event makes it low, which only checks early).
        self._left: dict[str, int] = {}
        self.may_have_finished: set[str] = set()
        self.finishing = asyncio.Event()
        self._totals: dict[str, int | None] = {}

    async def screen(self, events: Sequence[Event | None]) -> list[Refusal | None]:
        """Prompt events (and bills) are taken only for prompts their batch has (one query for the batches
        not seen yet). A prompt event whose batch has no row yet is deferred, not refused: the
        batch's `accepted` precedes it in the stream but may be in another replica's write still
        being committed (or in a write being retried); it comes back with a growing delay and, if
        its batch still has no row after a few deliveries (handling.DEFERRED_DELIVERIES, ~30 s),
        ends as a dead letter."""
        wanted = {e.batch_id for e in events if isinstance(e, checks.PROMPT_LEVEL)} - self._totals.keys()
        found: dict[str, int | None] = {}
        if wanted:
            async with self.engine.connect() as conn:
                found = await checks.batch_totals(conn, wanted)
            if len(self._totals) + len(found) > TOTALS_CACHED:
                self._totals.clear()
            # A rejected id may be accepted later: only accepted totals are kept.
            self._totals.update({b: n for b, n in found.items() if n is not None})
        return screen_verdicts(events, found | self._totals)

    async def write(self, events: Sequence[Event | None]) -> None:
        mine = [e for e in events if e is not None]
        if mine:
            async with self.engine.begin() as conn:
                touched = await record(conn, mine)
            self.touched(touched)
            self._count_down(mine)

    def touched(self, batch_ids: set[str]) -> None:
        """Batches whose committed state changed: their progress goes out at the next flush."""
        # Never `self.dirty |= await ...`: that would update the set flush() swapped out.
        self.dirty |= batch_ids

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

    async def recover(self) -> None:
        """Batches left running by a previous recorder get their progress and completion
        re-checked (waits for the database)."""
        while True:
            try:
                await self.mark_running_dirty()
                return
            except Exception as exc:
                log.warning("database not reachable yet (%r); retrying", exc)
                await asyncio.sleep(RECOVER_RETRY_S)

    async def flush(self, only_finishing: bool = False) -> None:
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
                await self._flush_one(batch_id)
            except Exception as exc:
                log.warning("progress for %s failed (%r); will retry", batch_id, exc)
                self.dirty.add(batch_id)

    async def flush_forever(self, interval_s: float) -> None:
        """Snapshots are throttled to one per `interval_s`; a batch that may just have finished
        is checked at once."""
        last_tick = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, last_tick + interval_s - time.monotonic())):
                    await self.finishing.wait()
            if time.monotonic() - last_tick >= interval_s:
                last_tick = time.monotonic()
                await self.flush()
            else:
                await self.flush(only_finishing=True)

    async def _flush_one(self, batch_id: str) -> None:
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
            await self._finish(prog)
        else:
            await self._publish_progress(prog)

    async def _publish_progress(self, prog: BatchProgress) -> None:
        await self.publisher.js.publish(
            subjects.progress(prog.batch_id), encode(prog), stream=subjects.STREAM_PROGRESS, timeout=10
        )

    async def _finish(self, prog: BatchProgress) -> None:
        batch_id = prog.batch_id
        if self.breakers is not None:
            await self.breakers.settled()
        status = reporting.final_status(prog.scored, prog.failed, prog.cancelled)
        rep, qual = await asyncio.gather(self._report(batch_id, status), self._quality(batch_id))
        assert rep is not None  # the batch has a row: progress() found it
        await self._publish_progress(prog.model_copy(update={"status": status}))
        # Publish before marking the row: a crash in between re-finds the batch running and
        # publishes again under the same Nats-Msg-Id.
        await self.publisher.publish([BatchCompleted(batch_id=batch_id, status=rep.status, report=rep, quality=qual)])
        async with self.engine.begin() as conn:
            if qual is not None:
                await store_quality(conn, qual)
            await store_final(conn, rep)
        log.info("batch %s finished: %s (%d ok, %d failed)", batch_id, rep.status, rep.completed, rep.failed)

    # On connections of their own, so the two run side by side when a batch finishes.
    async def _report(self, batch_id: str, status: BatchStatus) -> BatchReport | None:
        async with self.engine.connect() as conn:
            return await reporting.report(conn, batch_id, status)

    async def _quality(self, batch_id: str) -> QualityReport | None:
        async with self.engine.connect() as conn:
            return await quality.compute_quality(conn, batch_id)
