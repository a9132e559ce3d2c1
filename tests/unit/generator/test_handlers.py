"""The generator's handlers with fakes for what they are given: no server, no message."""

import json
from pathlib import Path

import pytest

from contracts import subjects
from contracts.events import BatchAccepted, BatchRejected, PromptQueued
from contracts.inputs import BatchConfig, CancelBatchRequested, Case, StartBatchRequested, SuiteRef
from contracts.topology import GENERATOR_START, suite_object_name
from services.generator.claims import StartClaim, StartState
from services.generator.handlers import (
    CANCEL_WAITS_FOR_START_S,
    FIRST_CHUNKS,
    CancelDelivery,
    StartDelivery,
    SuiteAccess,
    on_cancel_requested,
    on_start_requested,
    read_cancel,
    read_start_delivery,
)
from services.runtime.messaging.handling import Incoming, Refused, RetryLater
from tests.unit.generator.fakes import FakeCancels, FakeClaims, FakePublisher, FakeSuites

BATCH = "b-handlers"


def start_event(
    cases: int = 2, batch_id: str = BATCH, model: str = "m", suite: SuiteRef | None = None
) -> StartBatchRequested:
    return StartBatchRequested(
        batch_id=batch_id,
        config=BatchConfig(model=model),
        suite=suite or SuiteRef(cases=[Case(prompt=f"p{i}") for i in range(cases)]),
    )


def delivery(start: StartBatchRequested, delivered: int = 1) -> StartDelivery:
    return read_start_delivery(Incoming(start.subject, start.model_dump_json().encode(), delivered=delivered))


class Generator:
    """One generator's dependencies, as app.py provides them."""

    def __init__(self, suites: FakeSuites | None = None) -> None:
        self.publisher = FakePublisher()
        self.claims = FakeClaims()
        self.suites = suites or FakeSuites()
        self.access = SuiteAccess()

    async def start(self, d: StartDelivery) -> None:
        await on_start_requested(d, self.publisher, self.claims, self.suites, self.access)

    def rejected(self) -> list[BatchRejected]:
        return self.publisher.of(BatchRejected)


async def test_a_usable_start_publishes_accepted_then_every_prompt_in_order() -> None:
    gen = Generator()
    await gen.start(delivery(start_event(cases=200)))
    accepted, *prompts = gen.publisher.events
    assert isinstance(accepted, BatchAccepted) and accepted.total_prompts == 200
    assert all(isinstance(p, PromptQueued) for p in prompts)
    assert [p.index for p in prompts] == list(range(200))  # type: ignore[attr-defined]
    assert gen.claims.held[BATCH].state is StartState.ACCEPTED


async def test_an_unusable_suite_is_rejected_and_the_id_used() -> None:
    gen = Generator()
    await gen.start(delivery(start_event(cases=0)))
    [rejection] = gen.publisher.events
    assert isinstance(rejection, BatchRejected) and "no cases" in rejection.reason and not rejection.repeated_start
    assert gen.claims.held[BATCH].state is StartState.REJECTED


async def test_a_repeated_start_is_rejected_and_leaves_the_first_batch_as_it_is() -> None:
    gen = Generator()
    await gen.start(delivery(start_event()))
    first = gen.claims.held[BATCH]
    before = len(gen.publisher.events)
    await gen.start(delivery(start_event(model="other")))
    [rejection] = gen.publisher.events[before:]
    assert isinstance(rejection, BatchRejected) and rejection.repeated_start
    assert "was already started at" in rejection.reason and "(accepted)" in rejection.reason
    assert gen.claims.held[BATCH] == first


async def test_a_redelivery_of_the_answered_start_publishes_nothing() -> None:
    gen = Generator()
    d = delivery(start_event())
    await gen.start(d)
    before = len(gen.publisher.events)
    await gen.start(StartDelivery(d.start, d.data, delivered=2))
    assert len(gen.publisher.events) == before


async def test_a_repeat_waits_while_the_first_start_is_unsettled_then_is_answered() -> None:
    gen = Generator()
    gen.claims.held[BATCH] = StartClaim.new("someone-else", b"another start")  # still being planned
    with pytest.raises(RetryLater) as later:
        await gen.start(delivery(start_event(), delivered=1))
    assert later.value.delay_s > 0 and "being started" in str(later.value)
    with pytest.raises(RetryLater) as again:
        await gen.start(delivery(start_event(), delivered=3))
    assert again.value.delay_s > later.value.delay_s  # backs off
    assert gen.publisher.events == []
    await gen.start(delivery(start_event(), delivered=GENERATOR_START.max_deliver))
    [rejection] = gen.rejected()
    assert rejection.repeated_start and "(claimed)" in rejection.reason


async def test_an_invalid_start_with_a_batch_id_is_rejected_then_refused() -> None:
    gen = Generator()
    bad = Incoming(subjects.start_requested(BATCH), json.dumps({"batch_id": BATCH}).encode())
    with pytest.raises(Refused) as refused:
        await gen.start(read_start_delivery(bad))
    [rejection] = gen.rejected()
    assert rejection.batch_id == BATCH and rejection.reason == refused.value.reason
    assert "invalid start-batch event" in refused.value.reason
    assert gen.claims.held[BATCH].state is StartState.REJECTED  # the id is used


async def test_an_invalid_start_nobody_can_be_told_of_is_only_refused() -> None:
    gen = Generator()
    bad = Incoming("evalbus.v1.batch.not valid!.start.requested", b"{}")
    with pytest.raises(Refused, match="invalid start-batch event"):
        await gen.start(read_start_delivery(bad))
    assert gen.publisher.events == [] and gen.claims.held == {}


async def test_an_uploaded_suite_is_read_then_deleted(tmp_path: Path) -> None:
    source = tmp_path / "up.jsonl"
    source.write_text("".join(f'{{"prompt": "case {i}"}}\n' for i in range(3)))
    name = suite_object_name(BATCH, "0" * 64, ".jsonl")
    gen = Generator(FakeSuites({name: source}))
    await gen.start(delivery(start_event(suite=SuiteRef(object=name, name="up.jsonl"))))
    [accepted] = gen.publisher.of(BatchAccepted)
    assert accepted.total_prompts == 3 and accepted.suite_name == "up.jsonl"
    assert len(gen.publisher.of(PromptQueued)) == 3
    assert gen.suites.deleted == [name]


async def test_a_missing_upload_is_rejected_and_a_repeat_deletes_its_own_upload(tmp_path: Path) -> None:
    name = suite_object_name(BATCH, "0" * 64, ".jsonl")
    gen = Generator()
    await gen.start(delivery(start_event(suite=SuiteRef(object=name))))
    [rejection] = gen.rejected()
    assert "no uploaded suite" in rejection.reason
    assert gen.suites.deleted == [name]
    other = suite_object_name(BATCH, "1" * 64, ".jsonl")
    await gen.start(delivery(start_event(suite=SuiteRef(object=other))))
    assert gen.rejected()[1].repeated_start and gen.suites.deleted == [name, other]


async def test_a_publish_failure_is_raised_for_a_retry_and_keeps_the_upload(tmp_path: Path) -> None:
    source = tmp_path / "up.jsonl"
    source.write_text('{"prompt": "a"}\n')
    name = suite_object_name(BATCH, "0" * 64, ".jsonl")
    gen = Generator(FakeSuites({name: source}))
    gen.publisher.fail_after = 0
    with pytest.raises(TimeoutError):
        await gen.start(delivery(start_event(suite=SuiteRef(object=name))))
    assert gen.suites.deleted == [] and gen.claims.held[BATCH].state is StartState.CLAIMED


async def test_a_failure_after_accepted_went_out_refuses_the_start_without_rejecting() -> None:
    gen = Generator()
    gen.publisher = FakePublisher(fail_after=1 + len(FIRST_CHUNKS), error=KeyError)  # accepted and 2 chunks go out
    with pytest.raises(Refused, match="was accepted but publishing its prompts failed"):
        await gen.start(delivery(start_event(cases=500)))
    assert gen.rejected() == [] and gen.claims.held[BATCH].state is StartState.ACCEPTED


def cancel_delivery(batch_id: str = BATCH, delivered: int = 1) -> CancelDelivery:
    cancel = CancelBatchRequested(batch_id=batch_id, reason="user asked")
    return read_cancel(Incoming(cancel.subject, cancel.model_dump_json().encode(), delivered=delivered))


async def test_a_cancel_of_a_started_batch_is_recorded() -> None:
    claims, cancels = FakeClaims(), FakeCancels()
    await claims.claim(BATCH, StartClaim.new("e", b"start"))
    await on_cancel_requested(cancel_delivery(), claims, cancels)
    assert cancels.recorded == {BATCH: "user asked"}


async def test_a_cancel_of_an_unknown_batch_waits_for_its_start_then_is_refused() -> None:
    claims, cancels = FakeClaims(), FakeCancels()
    delays = []
    for attempt in range(1, len(CANCEL_WAITS_FOR_START_S) + 1):
        with pytest.raises(RetryLater) as later:
            await on_cancel_requested(cancel_delivery(delivered=attempt), claims, cancels)
        delays.append(later.value.delay_s)
    assert delays == list(CANCEL_WAITS_FOR_START_S)
    with pytest.raises(Refused, match=f"no batch {BATCH} was started"):
        await on_cancel_requested(cancel_delivery(delivered=len(delays) + 1), claims, cancels)
    assert cancels.recorded == {}


def test_a_cancel_naming_another_batch_than_its_subject_does_not_parse() -> None:
    body = CancelBatchRequested(batch_id="b-victim", reason="x").model_dump_json().encode()
    with pytest.raises(ValueError, match="does not match the subject"):
        read_cancel(Incoming(subjects.cancel_requested(BATCH), body))


def test_a_garbage_cancel_does_not_parse() -> None:
    with pytest.raises(ValueError, match="invalid cancel event"):
        read_cancel(Incoming(subjects.cancel_requested(BATCH), b'{"batch_id": 7}'))
