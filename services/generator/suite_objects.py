"""Uploaded suites: reading one from the object store into a temporary file, and deleting it.

nats-py's `ObjectStore.get` has no size limit and no time limit, and leaves its subscription
behind when it fails; an object's metadata is written by the uploader, so neither its size nor
its chunk count can be trusted. So the chunks are read here one by one with stream message gets
(no consumer to create or clean up), each under a timeout, up to the configured size; the
content must hash to the digest in the object's name.
"""

import asyncio
import hashlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import OBJ_CHUNKS_PRE_TEMPLATE, OBJ_STREAM_TEMPLATE

from contracts.topology import OBJ_SUITES, parse_suite_object_name
from services.generator.suite_loader import SuiteError, SuiteFile

log = logging.getLogger("evalbus.generator")


def _not_found(name: str) -> SuiteError:
    return SuiteError(f"no uploaded suite {name!r} (upload it before the start, once per batch)")


async def download(js: JetStreamContext, batch_id: str, name: str, label: str, into: Path, max_bytes: int) -> SuiteFile:
    """Write the uploaded suite `name` of batch `batch_id` to a file in directory `into`."""
    parsed = parse_suite_object_name(name)
    if parsed is None or parsed[0] != batch_id:
        raise SuiteError(f"an uploaded suite of batch {batch_id} is named '{batch_id}.<sha256>.<jsonl|yaml|yml>'")
    _, digest, ext = parsed
    try:
        store = await js.object_store(OBJ_SUITES)
        info = await store.get_info(name)
    except NotFoundError:  # no bucket or no such object
        raise _not_found(name) from None
    if info.is_link() or not info.nuid:
        raise _not_found(name)
    if info.size is not None and info.size > max_bytes:
        raise SuiteError(f"the uploaded suite is larger than the generator's limit of {max_bytes} bytes")
    stream = OBJ_STREAM_TEMPLATE.format(bucket=OBJ_SUITES)
    chunks = OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=OBJ_SUITES, obj=info.nuid)
    target = Path(tempfile.mkstemp(prefix=f"{batch_id}-", suffix=f".{ext}", dir=into)[1])
    sha = hashlib.sha256()
    size, seq = 0, 1
    with target.open("wb") as out:
        while size < (info.size or 0):
            try:
                msg = await js.get_msg(stream, seq=seq, subject=chunks, next=True)
            except NotFoundError:
                raise SuiteError("the uploaded suite is incomplete") from None
            data = msg.data or b""
            size += len(data)
            if size > max_bytes:
                raise SuiteError(f"the uploaded suite is larger than the generator's limit of {max_bytes} bytes")
            sha.update(data)
            await asyncio.to_thread(out.write, data)
            seq = (msg.seq or seq) + 1
    if sha.hexdigest() != digest:
        raise SuiteError("the uploaded suite does not match the digest in its name")
    return SuiteFile(path=target, label=label)


async def delete(js: JetStreamContext, name: str) -> None:
    """Best effort: the bucket's max age removes what this misses."""
    try:
        store = await js.object_store(OBJ_SUITES)
        await store.delete(name)
    except NotFoundError:
        pass
    except Exception as exc:
        log.warning("could not delete uploaded suite %s: %r", name, exc)


class SuiteStore(Protocol):
    """The uploaded suites (object store evalbus_suites), as the generator uses them."""

    async def download(self, batch_id: str, name: str, label: str, into: Path, max_bytes: int) -> SuiteFile: ...

    async def delete(self, name: str) -> None: ...


class JetStreamSuites:
    """SuiteStore over the service's connection (looked up at each call: it exists once the app
    has started)."""

    def __init__(self, js: Callable[[], JetStreamContext]) -> None:
        self._js = js

    async def download(self, batch_id: str, name: str, label: str, into: Path, max_bytes: int) -> SuiteFile:
        return await download(self._js(), batch_id, name, label, into, max_bytes)

    async def delete(self, name: str) -> None:
        await delete(self._js(), name)
