"""Large suites travel through the object store, under the deployment's locked-down permissions:
the client uploads, the generator reads (size-capped, digest-checked, only its batch's object)
and deletes once the start is settled (issue 12, defect 14)."""

import asyncio
import hashlib
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js.errors import ObjectNotFoundError

from contracts import subjects
from contracts.events import BatchAccepted, BatchRejected
from contracts.inputs import BatchConfig, StartBatchRequested, SuiteRef
from contracts.topology import OBJ_SUITES, suite_object_name
from evalbus import client as cli
from services.generator import suite_objects
from services.generator.handlers import SuiteAccess
from services.generator.suite_loader import SuiteError, count_cases
from services.generator.suite_objects import JetStreamSuites
from tests.integration import test_nats_permissions as locked_down
from tests.integration.test_nats_permissions import Connect, new_batch_id
from tests.unit.generator.fakes import FakeMsg, deliver_start

pytestmark = pytest.mark.integration
# The locked-down server of test_nats_permissions, started for this module too.
auth_server, provisioned, connect = locked_down.auth_server, locked_down.provisioned, locked_down.connect


def suite_file(tmp_path: Path, cases: int) -> Path:
    path = tmp_path / "big.jsonl"
    # ~1 kB a case: several 128 KiB chunks of the object store.
    path.write_text("".join(f'{{"prompt": "case {i} {"x" * 1000}"}}\n' for i in range(cases)))
    return path


async def test_client_uploads_and_generator_reads_then_deletes(connect: Connect, tmp_path: Path) -> None:
    client, gen = await connect("client"), await connect("generator")
    batch = new_batch_id()
    path = suite_file(tmp_path, 600)
    ref = await cli.upload_suite(client.nc, batch, path)
    assert ref.object is not None and ref.object.startswith(f"{batch}.") and ref.name == "big.jsonl"
    got = await suite_objects.download(gen.js, batch, ref.object, "big.jsonl", tmp_path, max_bytes=10**8)
    assert got.path.read_bytes() == path.read_bytes()
    assert count_cases(SuiteRef(object=ref.object), file=got) == 600
    await suite_objects.delete(gen.js, ref.object)
    with pytest.raises(ObjectNotFoundError):
        await (await gen.js.object_store(OBJ_SUITES)).get_info(ref.object)
    assert client.errors == [] and gen.errors == []


async def test_generator_starts_an_uploaded_suite_under_its_permissions(connect: Connect, tmp_path: Path) -> None:
    client, gen = await connect("client"), await connect("generator")
    batch = new_batch_id()
    ref = await cli.upload_suite(client.nc, batch, suite_file(tmp_path, 300))
    lifecycle: list[Msg] = []

    async def seen(msg: Msg) -> None:
        lifecycle.append(msg)

    await client.nc.subscribe(subjects.batch_lifecycle(batch), cb=seen)
    await client.nc.flush()
    start = StartBatchRequested(batch_id=batch, config=BatchConfig(model="m"), suite=ref)
    msg = FakeMsg(start.subject, start.model_dump_json().encode())
    assert await deliver_start(gen.js, msg, SuiteAccess(), JetStreamSuites(lambda: gen.js)) == "ack"
    for _ in range(100):
        if lifecycle:
            break
        await asyncio.sleep(0.05)
    accepted = BatchAccepted.model_validate_json(lifecycle[0].data)
    assert accepted.total_prompts == 300 and accepted.suite_name == "big.jsonl"
    assert ref.object is not None
    with pytest.raises(ObjectNotFoundError):  # deleted once the start was settled
        await (await gen.js.object_store(OBJ_SUITES)).get_info(ref.object)
    assert client.errors == [] and gen.errors == []


async def test_an_object_whose_content_does_not_match_its_name_is_refused(connect: Connect, tmp_path: Path) -> None:
    client, gen = await connect("client"), await connect("generator")
    batch = new_batch_id()
    name = suite_object_name(batch, hashlib.sha256(b"something else").hexdigest(), ".jsonl")
    await (await client.js.object_store(OBJ_SUITES)).put(name, b'{"prompt": "swapped"}\n')
    with pytest.raises(SuiteError, match="does not match the digest"):
        await suite_objects.download(gen.js, batch, name, "s", tmp_path, max_bytes=10**6)


async def test_an_object_over_the_size_limit_is_refused(connect: Connect, tmp_path: Path) -> None:
    client, gen = await connect("client"), await connect("generator")
    batch = new_batch_id()
    ref = await cli.upload_suite(client.nc, batch, suite_file(tmp_path, 300))
    assert ref.object is not None
    with pytest.raises(SuiteError, match="larger than"):
        await suite_objects.download(gen.js, batch, ref.object, "s", tmp_path, max_bytes=100_000)


async def test_a_start_cannot_use_another_batchs_upload_or_a_missing_one(connect: Connect, tmp_path: Path) -> None:
    client, gen = await connect("client"), await connect("generator")
    theirs = await cli.upload_suite(client.nc, new_batch_id(), suite_file(tmp_path, 2))
    assert theirs.object is not None
    mine = new_batch_id()
    with pytest.raises(SuiteError, match=f"an uploaded suite of batch {mine} is named"):
        await suite_objects.download(gen.js, mine, theirs.object, "s", tmp_path, max_bytes=10**6)
    missing = suite_object_name(mine, "0" * 64, ".yaml")
    with pytest.raises(SuiteError, match="no uploaded suite"):
        await suite_objects.download(gen.js, mine, missing, "s", tmp_path, max_bytes=10**6)
    rejected: list[BatchRejected] = []

    async def seen(msg: Msg) -> None:
        rejected.append(BatchRejected.model_validate_json(msg.data))

    await client.nc.subscribe(subjects.batch_event(mine, "batch", "rejected"), cb=seen)
    await client.nc.flush()
    start = StartBatchRequested(batch_id=mine, config=BatchConfig(model="m"), suite=SuiteRef(object=missing))
    msg = FakeMsg(start.subject, start.model_dump_json().encode())
    assert await deliver_start(gen.js, msg, suites=JetStreamSuites(lambda: gen.js)) == "ack"
    for _ in range(100):
        if rejected:
            break
        await asyncio.sleep(0.05)
    assert "no uploaded suite" in rejected[0].reason and not rejected[0].repeated_start
    assert gen.errors == []
