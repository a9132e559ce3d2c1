"""Expanding a start command into a batch: validation, defaults, and the prompt events."""

from collections.abc import Iterator
from dataclasses import dataclass

from contracts import ids
from contracts.events import BatchAccepted, BatchConfig, BatchRejected, PromptQueued, StartBatchRequested
from services.generator.suite_loader import SuiteError, count_cases, iter_cases


@dataclass(frozen=True)
class Plan:
    accepted: BatchAccepted
    start: StartBatchRequested

    def prompts(self) -> Iterator[PromptQueued]:
        """The prompt events, streamed from the suite in order."""
        cfg = self.accepted.config
        for index, case in enumerate(iter_cases(self.start.suite)):
            yield PromptQueued(
                batch_id=self.start.batch_id,
                prompt_id=ids.prompt_id(self.start.batch_id, index),
                index=index,
                case_id=case.id,
                messages=case.chat(cfg.system_prompt),
                expected=case.expected,
                metadata=case.metadata,
                config=cfg,
            )


def with_defaults(start: StartBatchRequested) -> BatchConfig:
    """Fill what a user may leave out; derived from the event so a redelivery derives the same."""
    cfg = start.config
    if cfg.session_id:
        return cfg
    stamp = start.occurred_at.strftime("%Y%m%dT%H%M%SZ")
    return cfg.model_copy(update={"session_id": ids.session_tag(cfg.model, stamp)})


def plan_batch(start: StartBatchRequested) -> Plan | BatchRejected:
    """Accept the batch if its whole suite is usable; otherwise say why."""
    try:
        total = count_cases(start.suite)
    except SuiteError as exc:
        return BatchRejected(batch_id=start.batch_id, reason=f"unusable suite: {exc}", errors=[str(exc)])
    if total == 0:
        return BatchRejected(batch_id=start.batch_id, reason="the suite has no cases", errors=[])
    accepted = BatchAccepted(
        batch_id=start.batch_id,
        config=with_defaults(start),
        suite_name=start.suite.display_name,
        total_prompts=total,
    )
    return Plan(accepted=accepted, start=start)
