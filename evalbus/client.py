"""What the CLI does over NATS: publish a start command, follow a batch, ask the query API."""

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import orjson
from nats.aio.client import DEFAULT_INBOX_PREFIX, Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import PubAck
from pydantic import ValidationError

from contracts import subjects
from contracts.events import BatchAccepted, BatchRejected
from contracts.inputs import CancelBatchRequested, StartBatchRequested, SuiteRef
from contracts.quality import QualityReport
from contracts.queries import BatchHistory, HistoryQuery, SamplesPage, SamplesQuery
from contracts.reports import BatchProgress, BatchReport, ResumeResult
from contracts.topology import OBJ_SUITES, suite_object_name


class ApiError(RuntimeError):
    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class ConnectError(RuntimeError):
    """The CLI could not reach or log in to NATS; the message says which."""


def inbox_prefix(user: str | None) -> str:
    """`_INBOX.<user>` for a logged-in user: the locked-down config lets each user read only its
    own inbox, so other users' replies (reports, samples) never reach it. nats-py adds the dot."""
    return f"_INBOX.{user}" if user else DEFAULT_INBOX_PREFIX.decode()


async def connect(url: str, user: str | None = None, password: str | None = None, within_s: float = 10) -> Client:
    """Connect, failing within `within_s` with the server's reason (nats-py would retry a refused
    login forever); once connected, reconnect forever so a broker restart does not end a follow."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    try:
        return await asyncio.wait_for(
            nats.connect(
                url.split(","),
                name="evalbus-cli",
                connect_timeout=5,
                max_reconnect_attempts=-1,
                user=user,
                password=password,
                inbox_prefix=inbox_prefix(user),
                error_cb=on_error,
            ),
            within_s,
        )
    except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
        reason = errors[-1] if errors else exc
        raise ConnectError(f"cannot connect to NATS at {url}: {reason}") from exc


async def publish_start(nc: Client, start: StartBatchRequested) -> PubAck:
    """Publish a start command. `duplicate` on the answer: the stream already holds a start of this
    batch id (published in its dedup window), so this one was dropped: batch ids are single-use."""
    js = nc.jetstream()
    return await js.publish(
        subjects.start_requested(start.batch_id),
        start.model_dump_json().encode(),
        headers={"Nats-Msg-Id": start.event_id},
        stream=subjects.STREAM_EVENTS,
        timeout=10,
    )


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def upload_suite(nc: Client, batch_id: str, path: Path) -> SuiteRef:
    """Put a suite file in the object store, named for the batch and its content, for the
    generator to read: no shared disk needed, wherever the services run."""
    name = suite_object_name(batch_id, await asyncio.to_thread(_sha256_of, path), path.suffix)
    store = await nc.jetstream(timeout=30).object_store(OBJ_SUITES)
    with path.open("rb") as fh:
        await store.put(name, fh)
    return SuiteRef(name=path.name[:200], object=name)


async def publish_cancel(nc: Client, cancel: CancelBatchRequested) -> None:
    await nc.jetstream().publish(
        subjects.cancel_requested(cancel.batch_id),
        cancel.model_dump_json().encode(),
        headers={"Nats-Msg-Id": cancel.event_id},
        stream=subjects.STREAM_EVENTS,
        timeout=10,
    )


@dataclass
class BatchOutcome:
    """What a follower learnt of its batch: accepted or rejected, then the report once it finished."""

    accepted: BatchAccepted | None = None
    rejected: BatchRejected | None = None
    report: BatchReport | None = None  # from the recorder's API, never from an event's body


class Follower:
    """Listens to one batch's lifecycle and progress subjects (subscribe before publishing).

    A `batch.completed` event is only a cue: anyone allowed to publish on the subject could have
    sent it, so `wait_outcome` asks the recorder's API (which only the recorder serves) for the
    report instead of believing the body.
    """

    def __init__(
        self,
        batch_id: str,
        on_accepted: Callable[[BatchAccepted], None],
        on_progress: Callable[[BatchProgress], None],
    ) -> None:
        self.batch_id = batch_id
        self.on_accepted = on_accepted
        self.on_progress = on_progress
        self.outcome = BatchOutcome()
        self.done = asyncio.Event()
        self.completion_seen = asyncio.Event()
        self._best = -1

    async def subscribe(self, nc: Client) -> None:
        await nc.subscribe(subjects.batch_lifecycle(self.batch_id), cb=self._lifecycle)
        await nc.subscribe(subjects.progress(self.batch_id), cb=self._progress)

    async def _lifecycle(self, msg: Msg) -> None:
        verb = msg.subject.rsplit(".", 1)[-1]
        try:
            if verb == "accepted" and self.outcome.accepted is None:
                self.outcome.accepted = BatchAccepted.model_validate_json(msg.data)
                self.on_accepted(self.outcome.accepted)
            elif verb == "rejected" and self.outcome.accepted is None:
                self.outcome.rejected = BatchRejected.model_validate_json(msg.data)
                self.done.set()
        except ValidationError:
            return  # not an event of ours: the recorder's API has the last word
        if verb == "completed":
            self.completion_seen.set()

    async def _progress(self, msg: Msg) -> None:
        try:
            snap = BatchProgress.model_validate_json(msg.data)
        except ValidationError:
            return
        if snap.done >= self._best:  # shown monotonically even if snapshots cross on the wire
            self._best = snap.done
            self.on_progress(snap)


async def wait_outcome(nc: Client, follower: Follower, poll_s: float = 10.0) -> BatchOutcome:
    """Until the batch is rejected or the recorder's API reports it finished.

    The API is asked on every `batch.completed` cue and every `poll_s` (so a missed event does
    not leave the CLI waiting); while it says the batch is running, or does not know it yet,
    this keeps waiting.
    """
    while True:
        cues = [asyncio.create_task(follower.done.wait()), asyncio.create_task(follower.completion_seen.wait())]
        try:
            await asyncio.wait(cues, timeout=poll_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for cue in cues:
                cue.cancel()
        if follower.outcome.rejected is not None:
            return follower.outcome
        follower.completion_seen.clear()
        try:
            report = await fetch_report(nc, follower.batch_id)
        except ApiError as exc:
            if exc.code == "404":
                continue  # not recorded yet
            raise
        except TimeoutError:
            continue  # the recorder is restarting; ask again on the next cue
        if report.status.terminal:
            follower.outcome.report = report
            return follower.outcome


async def request(nc: Client, subject: str, body: bytes, timeout_s: float = 10) -> bytes:
    """Ask the recorder's API; while it is (re)starting there are no responders, so wait for it a while."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            reply = await nc.request(subject, body, timeout=timeout_s)
            break
        except NoRespondersError:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("no recorder answered") from None
            await asyncio.sleep(0.25)
    headers = reply.headers or {}
    if "Nats-Service-Error-Code" in headers:
        raise ApiError(headers["Nats-Service-Error-Code"], headers.get("Nats-Service-Error", ""))
    return reply.data


async def query(
    nc: Client, endpoint: str, batch_id: str, timeout_s: float = 10, extra: dict[str, str] | None = None
) -> bytes:
    """Ask one of the recorder's `batch.<endpoint>` queries about a batch."""
    body = orjson.dumps({"batch_id": batch_id, **(extra or {})})
    return await request(nc, subjects.api(f"batch.{endpoint}"), body, timeout_s)


async def service_status(nc: Client, service: str, timeout_s: float = 3) -> dict[str, object]:
    """A service's own status; a service with no replica answering is reported as not healthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            reply = await nc.request(f"{subjects.control(service)}.status", b"", timeout=timeout_s)
            break
        except (NoRespondersError, TimeoutError):
            if loop.time() >= deadline:
                return {"service": service, "healthy": False, "error": "no replica answered"}
            await asyncio.sleep(0.2)
    status: dict[str, object] = orjson.loads(reply.data)
    return status


async def fetch_report(nc: Client, batch_id: str) -> BatchReport:
    return BatchReport.model_validate_json(await query(nc, "report", batch_id))


async def resume(nc: Client, batch_id: str, token: str) -> ResumeResult:
    return ResumeResult.model_validate_json(await query(nc, "resume", batch_id, timeout_s=60, extra={"token": token}))


async def fetch_status(nc: Client, batch_id: str) -> BatchProgress:
    return BatchProgress.model_validate_json(await query(nc, "status", batch_id))


async def fetch_quality(nc: Client, batch_id: str) -> QualityReport:
    return QualityReport.model_validate_json(await query(nc, "quality", batch_id, timeout_s=30))


async def fetch_samples(nc: Client, q: SamplesQuery) -> SamplesPage:
    body = q.model_dump_json(exclude_defaults=True).encode()
    return SamplesPage.model_validate_json(await request(nc, subjects.api("batch.samples"), body, timeout_s=30))


async def fetch_history(nc: Client, q: HistoryQuery) -> BatchHistory:
    body = q.model_dump_json(exclude_defaults=True).encode()
    return BatchHistory.model_validate_json(await request(nc, subjects.api("batches.history"), body))
