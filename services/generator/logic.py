"""Expanding a start command into a batch: validation, defaults, and the prompt events."""

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from contracts import ids, subjects
from contracts.bounds import MAX_NAME
from contracts.events import BatchAccepted, BatchRejected, PromptQueued
from contracts.inputs import BatchConfig, StartBatchRequested
from contracts.validation import describe_error
from services.generator.suite_loader import SuiteError, SuiteFile, count_cases, iter_cases, locate
from services.runtime.models.endpoints import check_batch_endpoints

log = logging.getLogger("evalbus.generator")
# What a start is told when reading its suite failed in a way we did not foresee (the log has why).
UNEXPECTED = "the generator could not read this suite (an unexpected error; it is not retried)"


@dataclass(frozen=True)
class BatchPlan:
    """An accepted batch: its accepted event and where its prompts are read from."""

    accepted: BatchAccepted
    start: StartBatchRequested
    file: SuiteFile | None = None  # where the cases are read from again (None: inline)

    def prompts(self) -> Iterator[PromptQueued]:
        """The prompt events, streamed from the suite in order."""
        cfg = self.accepted.config
        for index, case in enumerate(iter_cases(self.start.suite, file=self.file)):
            yield PromptQueued(
                batch_id=self.start.batch_id,
                prompt_id=ids.prompt_id(self.start.batch_id, index),
                index=index,
                case_id=case.id,
                messages=case.chat(cfg.system_prompt),
                expected=case.expected,
                references=[*case.references, *cfg.references],
                metadata=case.metadata,
                config=cfg,
            )


def with_defaults(start: StartBatchRequested) -> BatchConfig:
    """Fill what a user may leave out; derived from the event so a redelivery derives the same."""
    cfg = start.config
    if cfg.session_id:
        return cfg
    stamp = start.occurred_at.strftime("%Y%m%dT%H%M%SZ")
    tag = ids.session_tag(cfg.model, stamp, max_length=MAX_NAME)
    # Validated, not model_copy'd: a derived value must respect the bound of the field it fills.
    return BatchConfig.model_validate({**cfg.model_dump(), "session_id": tag})


def plan_batch(
    start: StartBatchRequested, dirs: Sequence[Path] = (), file: SuiteFile | None = None
) -> BatchPlan | BatchRejected:
    """Accept the batch if its whole suite is usable; otherwise say why. Never raises: a suite
    that breaks the reader in an unforeseen way is rejected too, since reading it again would
    break it again. `file` is an upload's download; `dirs` where suites by path may be."""
    if (refused := check_batch_endpoints(start.config)) is not None:
        return BatchRejected(batch_id=start.batch_id, reason=refused, errors=[refused])
    try:
        source = file if file is not None else locate(start.suite, dirs)
        total = count_cases(start.suite, dirs, source)
    except SuiteError as exc:
        return BatchRejected(batch_id=start.batch_id, reason=f"unusable suite: {exc}", errors=[str(exc)])
    except Exception:
        log.exception("reading the suite of batch %s failed", start.batch_id)
        return BatchRejected(batch_id=start.batch_id, reason=UNEXPECTED, errors=[UNEXPECTED])
    if total == 0:
        return BatchRejected(batch_id=start.batch_id, reason="the suite has no cases", errors=[])
    try:
        accepted = BatchAccepted(
            batch_id=start.batch_id,
            config=with_defaults(start),
            suite_name=start.suite.display_name,
            total_prompts=total,
        )
    except ValueError as exc:  # a derived field out of its bounds
        reason = f"invalid batch: {describe_error(exc)}"
        return BatchRejected(batch_id=start.batch_id, reason=reason, errors=[reason])
    return BatchPlan(accepted=accepted, start=start, file=source)


@dataclass(frozen=True)
class InvalidStart:
    """A start command that cannot be used; `batch_id` is who to tell (None: nobody can be)."""

    batch_id: str | None
    reason: str

    def rejection(self) -> BatchRejected | None:
        if self.batch_id is None or not ids.is_valid_batch_id(self.batch_id):
            return None
        return BatchRejected(batch_id=self.batch_id, reason=self.reason, errors=[self.reason])


def read_start(subject: str, data: bytes) -> StartBatchRequested | InvalidStart:
    """Parse a start command from the wire; never raises on bad input."""
    parsed = subjects.parse_batch_subject(subject)
    subject_batch = parsed.batch_id if parsed is not None else None
    try:
        start = StartBatchRequested.model_validate_json(data)
    except (ValidationError, ValueError) as exc:
        return InvalidStart(subject_batch, f"invalid start-batch event: {describe_error(exc)}")
    if start.batch_id != subject_batch:
        return InvalidStart(
            subject_batch, f"batch_id {start.batch_id!r} in the body does not match the subject's {subject_batch!r}"
        )
    return start
