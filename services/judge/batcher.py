"""The judge's micro-batcher: answers of the same batch and judge config wait together until the
batch's `judge_batch_size` is reached or the linger runs out, then are graded in one call.

Each message's handler awaits its own answer's result, so a message is still acked only after
its own event is published, kept alive while it waits, and redelivered if its handler fails.
With it come the bills of the calls that graded the answer: every handler of a group returns a
batched call's bill, the same event (one call id), which the stream and the ledger keep once."""

import asyncio
import logging
from collections.abc import Container
from dataclasses import dataclass, field

from contracts.enums import Stage
from contracts.events import CallBilled, PromptFailed, PromptJudged, PromptResponded
from services.judge.logic import grade_group, not_judged
from services.runtime.models.client import ChatModel
from services.runtime.models.endpoints import Endpoints
from services.runtime.models.ledger import Meter

log = logging.getLogger("evalbus.judge")
Result = PromptJudged | PromptFailed
Billed = tuple[Result, list[CallBilled]]  # an answer's result and the bills of the calls that graded it


@dataclass
class _Group:
    waiting: list[tuple[PromptResponded, asyncio.Future[Billed]]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class JudgeBatcher:
    def __init__(
        self, model: ChatModel, endpoints: Endpoints, *, linger_s: float, cancelled: Container[str] = ()
    ) -> None:
        self._model = model
        self._endpoints = endpoints
        self._linger_s = linger_s
        self._cancelled = cancelled
        self._groups: dict[tuple[str, str], _Group] = {}
        self._grading: set[asyncio.Task[None]] = set()

    async def judge(self, evt: PromptResponded) -> Result:
        return (await self.judge_billed(evt))[0]

    async def judge_billed(self, evt: PromptResponded) -> Billed:
        """The answer's result, and the bills of the calls that graded it (none without a call)."""
        if evt.batch_id in self._cancelled:
            return PromptFailed.cancelled(evt, Stage.JUDGE), []
        cfg = evt.config
        if not cfg.judge_enabled:
            return not_judged(evt), []
        # The whole config: answers graded together must share criteria, thresholds, judge
        # model and endpoint, mode and limits, and a batch's events normally all carry the same.
        key = (evt.batch_id, cfg.model_dump_json())
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Billed] = loop.create_future()
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group()
            group.timer = loop.call_later(self._linger_s, self._flush, key, group)
        group.waiting.append((evt, result))
        if len(group.waiting) >= cfg.judge_batch_size:
            self._flush(key, group)
        return await result

    def _flush(self, key: tuple[str, str], group: _Group) -> None:
        if self._groups.get(key) is not group:
            return  # already flushed (full before its linger ran out)
        del self._groups[key]
        if group.timer is not None:
            group.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._grade(group.waiting))
        self._grading.add(task)  # a reference, or the task may be collected before it runs
        task.add_done_callback(self._grading.discard)

    async def _grade(self, waiting: list[tuple[PromptResponded, asyncio.Future[Billed]]]) -> None:
        evts = [evt for evt, _ in waiting]
        meter = Meter(self._model)
        try:
            if evts[0].batch_id in self._cancelled:  # cancelled while these waited
                results: list[Result] = [PromptFailed.cancelled(e, Stage.JUDGE) for e in evts]
            else:
                results = await grade_group(meter, evts, self._endpoints)
        except asyncio.CancelledError:
            for _, fut in waiting:
                fut.cancel()
            raise
        except Exception as exc:
            # Each waiting handler raises, so its message is redelivered; other groups go on.
            log.exception("grading %d answers of %s failed", len(evts), evts[0].batch_id)
            for _, fut in waiting:
                if not fut.done():
                    fut.set_exception(exc)
            return
        bills = meter.billed(evts[0].config)
        for (evt, fut), res in zip(waiting, results, strict=True):
            if not fut.done():  # its handler may have been cancelled meanwhile
                fut.set_result((res, [b for b in bills if evt.prompt_id in b.prompt_ids]))

    @property
    def waiting(self) -> int:
        """Answers not yet handed to a model call (for tests and status)."""
        return sum(len(g.waiting) for g in self._groups.values())
