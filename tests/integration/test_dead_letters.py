"""A message that runs out of deliveries ends as a dead letter and its prompt as a failure."""

import contextlib
import secrets

import nats
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.enums import FailureCategory, Stage
from contracts.events import BatchAccepted, PromptFailed, PromptQueued
from contracts.inputs import BatchConfig, ChatMessage
from contracts.ops import DeadLetter
from contracts.topology import ConsumerSpec
from infra.nats_topology import consumer_config
from services.recorder.handlers import dead_letter_of
from services.recorder.parsing import parse_dead_letter
from services.recorder.repository import record, record_dead_letters
from services.recorder.streams import StreamOriginals
from services.runtime.messaging.handling import Incoming
from services.runtime.messaging.publishing import JetStreamPublisher, publish_events

pytestmark = pytest.mark.integration


async def test_max_deliveries_advisory_becomes_a_dead_letter_and_a_failure(servers) -> None:  # type: ignore[no-untyped-def]
    nc = await nats.connect(servers.nats_url)
    js = nc.jetstream()
    batch_id = "b-maxd-" + secrets.token_hex(3)
    durable = f"test-maxd-{batch_id}"
    spec = ConsumerSpec(
        durable=durable,
        stream=subjects.STREAM_EVENTS,
        filter_subject=subjects.batch_event(batch_id, "prompt", "queued"),
        ack_wait_s=1,
        max_deliver=2,
        max_ack_pending=10,
    )
    await js.add_consumer(spec.stream, consumer_config(spec))
    advisories = await js.pull_subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.STREAM_EVENTS}.{durable}", stream=subjects.STREAM_DLQ
    )
    evt = PromptQueued(
        batch_id=batch_id,
        prompt_id=f"{batch_id}-000000",
        index=0,
        messages=[ChatMessage(role="user", content="q")],
        config=BatchConfig(model="m"),
    )
    await publish_events(js, [evt])
    sub = await js.pull_subscribe_bind(durable=durable, stream=spec.stream)
    for _ in range(2):  # a worker that always fails
        for msg in await sub.fetch(1, timeout=5):
            await msg.nak()
    with contextlib.suppress(TimeoutError):  # the server gives up when it would deliver a third time
        await sub.fetch(1, timeout=1)
    advisory = (await advisories.fetch(1, timeout=10))[0]  # captured by the DLQ stream
    # As the recorder's dead-letter consumer resolves it: parsed, then the original read from the stream.
    letter = await dead_letter_of(
        parse_dead_letter(Incoming.of(advisory)), StreamOriginals(JetStreamPublisher(lambda: js))
    )
    await nc.close()  # (drain would wait out the open pull requests)
    assert isinstance(letter, DeadLetter) and letter.subject == evt.subject and "2 deliveries" in letter.reason

    engine = create_async_engine(servers.database_url)
    try:
        async with engine.begin() as conn:  # only prompts a recorded batch has become failures
            await record(conn, [BatchAccepted(batch_id=batch_id, config=evt.config, suite_name="s", total_prompts=1)])
        for _ in range(2):  # redelivered letters change nothing
            async with engine.begin() as conn:
                assert await record_dead_letters(conn, [letter]) == {batch_id}
        async with engine.connect() as conn:
            rows = (
                await conn.execute(text("SELECT stage, category FROM failures WHERE batch_id = :b"), {"b": batch_id})
            ).all()
            letters = (
                await conn.execute(text("SELECT count(*) FROM dead_letters WHERE subject = :s"), {"s": evt.subject})
            ).scalar_one()
        assert [tuple(r) for r in rows] == [("chat", "dead_letter")] and letters == 1
    finally:
        await engine.dispose()


async def test_dead_letters_of_prompts_a_batch_does_not_have_are_kept_but_fail_nothing(servers) -> None:  # type: ignore[no-untyped-def]
    batch_id = "b-dlx-" + secrets.token_hex(3)
    cfg = BatchConfig(model="m")

    def letter(index: int, prompt_id: str, subject_batch: str = batch_id, seq: int = 0) -> DeadLetter:
        evt = PromptQueued(
            batch_id=batch_id,
            prompt_id=prompt_id,
            index=index,
            messages=[ChatMessage(role="user", content="q")],
            config=cfg,
        )
        return DeadLetter(
            service="chat-runner",
            subject=subjects.batch_event(subject_batch, "prompt", "queued"),
            reason="invalid",
            payload=evt.to_json().decode(),
            stream_seq=seq or None,
        )

    letters = [
        letter(5, f"{batch_id}-000005"),  # beyond the batch's 2 prompts
        letter(1, "another-id"),  # not the id of index 1
        letter(1, f"{batch_id}-000001", subject_batch="b-elsewhere"),  # the subject names another batch
        letter(1, f"{batch_id}-000001"),  # the one real prompt
    ]
    # a prompt's failure the recorder could not store still ends that prompt, at the stage it names
    failed = PromptFailed(
        batch_id=batch_id,
        prompt_id=f"{batch_id}-000000",
        index=0,
        stage=Stage.JUDGE,
        category=FailureCategory.TIMEOUT,
        error="slow",
    )
    letters.append(
        DeadLetter(service="recorder", subject=failed.subject, reason="NUL", payload=failed.to_json().decode())
    )
    engine = create_async_engine(servers.database_url)
    try:
        async with engine.begin() as conn:
            await record(conn, [BatchAccepted(batch_id=batch_id, config=cfg, suite_name="s", total_prompts=2)])
            assert await record_dead_letters(conn, letters) == {batch_id}
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT prompt_id, stage FROM failures WHERE batch_id = :b ORDER BY prompt_id"), {"b": batch_id}
            )
            assert [tuple(r) for r in rows] == [(f"{batch_id}-000000", "judge"), (f"{batch_id}-000001", "chat")]
    finally:
        await engine.dispose()
