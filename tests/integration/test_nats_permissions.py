"""The deployment's nats-server.conf on a real nats-server: every role can do its job and no more.

This module starts its own server with `infra/nats/nats-server.conf` (the shared test server has
no authorization). A denied publish is only a timeout to nats-py; the reason reaches the
connection's error_cb, so that is what the denials assert on.
"""

import asyncio
import contextlib
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import nats
import orjson
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from contracts.queries import BatchHistory, HistoryQuery, SamplesQuery
from contracts.reports import ResumeResult
from contracts.topology import (
    CHAT_RUNNER_QUEUED,
    CONSUMERS,
    GENERATOR_CANCEL,
    GENERATOR_START,
    JUDGE_RESPONDED,
    KV_CANCELS,
    KV_LEASES,
    KV_STARTS,
    LEASE_TTL_S,
    RECORDER_DEAD_LETTERS,
    RECORDER_EVENTS,
    SCORER_JUDGED,
    STREAMS,
    ConsumerSpec,
)
from evalbus import client as cli
from infra import nats_config
from infra.embedded import free_port, nats_server_binary, wait_for_port
from infra.nats_topology import apply_topology
from services.recorder.api import start_api
from services.runtime.messaging.cancels import CancelledBatches
from services.runtime.messaging.health import Health
from services.runtime.models.leases import KvSlotStore, SharedLeases, batch_key

pytestmark = pytest.mark.integration

SERVICES = ("generator", "chat-runner", "judge", "scorer", "recorder")
DENIAL_WAIT_S = 0.4  # how long a denied request waits; the verdict comes from error_cb
# Passwords NATS would misread unquoted: a number, a size, a boolean, broken syntax, a comment,
# a variable reference, a quote of the other kind, spaces at either end.
AWKWARD_PASSWORDS = {
    "client": "123456",
    "scorer": "10G",
    "judge": "yes",
    "recorder": 'a "b" \\c, d} #e',
    "operator": "it's $HOME # no comment",
    "generator": "$EVALBUS_NATS_CLIENT_PASSWORD",
    "chat-runner": "-1.5e3",
    "provisioner": "  spaced  out  ",
}


@dataclass(frozen=True)
class AuthServer:
    url: str
    passwords: dict[str, str]  # role -> password


@dataclass
class Conn:
    nc: Client
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=2)

    async def violation(self, text: str, within_s: float = 2.0) -> str:
        """The error_cb message containing `text`, once the server has sent it.

        nats-py lowercases the server's -ERR text, subject included, so the match ignores case.
        """
        deadline = asyncio.get_running_loop().time() + within_s
        while asyncio.get_running_loop().time() < deadline:
            for err in self.errors:
                if text.lower() in err.lower():
                    return err
            await asyncio.sleep(0.02)
        raise AssertionError(f"no error containing {text!r}; errors: {self.errors}")


Connect = Callable[[str], Awaitable[Conn]]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    tmp = tmp_path_factory.mktemp("nats-auth")
    # Passwords NATS would read as a number, a size, a boolean or broken syntax if unquoted.
    passwords = {**nats_config.test_passwords(), **AWKWARD_PASSWORDS}
    env = {**os.environ, **nats_config.server_env(passwords)}
    port = free_port()
    http_port = free_port()
    while http_port == port:
        http_port = free_port()
    # A copy of the deployment config on loopback, free ports and a temporary store instead of /data.
    conf = nats_config.render(
        tmp / "nats-server.conf", store_dir=tmp / "js", listen=f"127.0.0.1:{port}", http=f"127.0.0.1:{http_port}"
    )
    binary = nats_server_binary()
    checked = subprocess.run([binary, "-t", "-c", str(conf)], env=env, capture_output=True, text=True, timeout=10)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    with (tmp / "nats-server.log").open("wb") as out:  # "Publish Violation" lines land here too
        proc = subprocess.Popen([binary, "-c", str(conf)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 10, proc)
        yield AuthServer(url=f"nats://127.0.0.1:{port}", passwords=passwords)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
async def provisioned(auth_server: AuthServer) -> AuthServer:
    """Streams, consumers and KV buckets created as the provisioner user, as `evalbus migrate` does."""
    warnings = await apply_topology(auth_server.url, user="provisioner", password=auth_server.passwords["provisioner"])
    assert warnings == []
    return auth_server


@pytest.fixture
async def connect(provisioned: AuthServer) -> AsyncIterator[Connect]:
    opened: list[Client] = []

    async def _connect(role: str) -> Conn:
        conn = Conn(nc=Client())

        async def on_error(exc: Exception) -> None:
            conn.errors.append(str(exc))

        # Every role reads its replies in its own inbox: services (services.runtime.bus.make_broker),
        # the CLI (evalbus.client.connect) and the provisioner (infra.nats_topology) alike.
        prefix = cli.inbox_prefix(role)
        await conn.nc.connect(
            provisioned.url,
            user=role,
            password=provisioned.passwords[role],
            name=f"test-{role}",
            inbox_prefix=prefix,
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=5,
        )
        opened.append(conn.nc)
        return conn

    yield _connect
    for nc in opened:
        with contextlib.suppress(Exception):
            await nc.close()


def new_batch_id() -> str:
    return "b-" + secrets.token_hex(4)


def msg_id() -> dict[str, str]:
    return {"Nats-Msg-Id": secrets.token_hex(8)}


async def assert_publish_denied(conn: Conn, subject: str) -> None:
    with pytest.raises(TimeoutError):
        await conn.js.publish(subject, b"{}", headers=msg_id(), timeout=DENIAL_WAIT_S)
    await conn.violation(f'Permissions Violation for Publish to "{subject}"')


async def assert_subscribe_denied(conn: Conn, subject: str) -> None:
    await conn.nc.subscribe(subject)
    await conn.nc.flush()
    await conn.violation(f'Permissions Violation for Subscription to "{subject}"')


# -- logging in ------------------------------------------------------------------------------


@pytest.mark.parametrize(("user", "password"), [(None, None), ("generator", "pwrong")], ids=["anonymous", "wrong"])
async def test_connection_without_valid_credentials_is_refused(
    provisioned: AuthServer, user: str | None, password: str | None
) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(provisioned.url, user=user, password=password, allow_reconnect=False, connect_timeout=5)


async def test_provisioner_creates_the_topology_and_nothing_else(provisioned: AuthServer, connect: Connect) -> None:
    # The fixture created everything; a second run takes the update path of every stream and consumer.
    pw = provisioned.passwords["provisioner"]
    assert await apply_topology(provisioned.url, user="provisioner", password=pw) == []
    prov = await connect("provisioner")
    names = {s.config.name for s in await prov.js.streams_info()}
    assert {s.name for s in STREAMS} | {f"KV_{KV_STARTS}", f"KV_{KV_CANCELS}"} <= names
    for spec in CONSUMERS:
        info = await prov.js.consumer_info(spec.stream, spec.durable)
        assert (info.config.filter_subject or "") == spec.filter_subject  # "" is the whole stream
    # It manages the topology but does not read stored events through the API.
    with pytest.raises(TimeoutError):
        await prov.nc.jetstream(timeout=DENIAL_WAIT_S).get_msg(subjects.STREAM_EVENTS, seq=1)
    await prov.violation(f'Permissions Violation for Publish to "$JS.API.STREAM.MSG.GET.{subjects.STREAM_EVENTS}"')
    assert len(prov.errors) == 1


# -- every service does its own job ----------------------------------------------------------


@dataclass(frozen=True)
class Feed:
    """A durable the service consumes, and who produces what lands on it."""

    spec: ConsumerSpec
    upstream: str
    subject: str  # `*` is the batch id


@dataclass(frozen=True)
class Job:
    service: str
    feeds: tuple[Feed, ...]
    events: tuple[str, ...]  # published with publish_async, as services.runtime.bus.publish_events does
    other: tuple[tuple[str, str], ...] = ()  # (subject, stream) published with js.publish

    def __str__(self) -> str:
        return self.service


def ev(entity: str, verb: str) -> str:
    return subjects.any_batch(entity, verb)


BREAKER = subjects.breaker("http://127.0.0.1:8089/v1")


JOBS = (
    Job(
        "generator",
        (
            Feed(GENERATOR_START, "client", ev("start", "requested")),
            Feed(GENERATOR_CANCEL, "client", ev("cancel", "requested")),
        ),
        (ev("batch", "accepted"), ev("batch", "rejected"), ev("prompt", "queued")),
    ),
    Job(
        "chat-runner",
        (Feed(CHAT_RUNNER_QUEUED, "generator", ev("prompt", "queued")),),
        (ev("prompt", "responded"), ev("prompt", "failed")),
        ((BREAKER, subjects.STREAM_OPS),),
    ),
    Job(
        "judge",
        (Feed(JUDGE_RESPONDED, "chat-runner", ev("prompt", "responded")),),
        (ev("prompt", "judged"), ev("prompt", "failed")),
        ((BREAKER, subjects.STREAM_OPS),),
    ),
    Job("scorer", (Feed(SCORER_JUDGED, "judge", ev("prompt", "judged")),), (ev("prompt", "scored"),)),
    Job(
        "recorder",
        (
            Feed(RECORDER_EVENTS, "scorer", ev("prompt", "scored")),
            Feed(RECORDER_DEAD_LETTERS, "scorer", subjects.dlq("scorer")),
        ),
        (ev("batch", "completed"),),
        ((subjects.progress("*"), subjects.STREAM_PROGRESS),),
    ),
)


async def take_until(sub: JetStreamContext.PullSubscription, subject: str) -> list[Msg]:
    """Fetch (and settle) until `subject` arrives, as the services' consumers do."""
    seen: list[Msg] = []
    for _ in range(5):
        for msg in await sub.fetch(64, timeout=1):
            await msg.in_progress()
            await msg.ack_sync()  # the server confirms the ack, so a denied ack cannot pass unseen
            seen.append(msg)
        if any(m.subject == subject for m in seen):
            return seen
    raise AssertionError(f"{subject} never arrived; got {[m.subject for m in seen]}")


@pytest.mark.parametrize("job", JOBS, ids=str)
async def test_service_binds_its_durable_fetches_acks_and_publishes_its_events(connect: Connect, job: Job) -> None:
    batch = new_batch_id()
    svc = await connect(job.service)
    upstreams: list[Conn] = []
    for feed in job.feeds:
        upstream = await connect(feed.upstream)
        upstreams.append(upstream)
        subject = feed.subject.replace("*", batch)
        await upstream.js.publish(subject, b"{}", headers=msg_id(), stream=feed.spec.stream)

        # The deliver subject is the prefix + a nuid: it must end in '.' to fall under _INBOX.<svc>.>.
        inbox = f"_INBOX.{job.service}.".encode()
        sub = await svc.js.pull_subscribe_bind(durable=feed.spec.durable, stream=feed.spec.stream, inbox_prefix=inbox)
        assert (await sub.consumer_info()).name == feed.spec.durable
        await take_until(sub, subject)
        await sub.unsubscribe()

    futures = [
        await svc.js.publish_async(s.replace("*", batch), b"{}", headers=msg_id(), stream=subjects.STREAM_EVENTS)
        for s in job.events
    ]
    acks = await asyncio.wait_for(asyncio.gather(*futures), 5)
    assert all(a.stream == subjects.STREAM_EVENTS and not a.duplicate for a in acks)
    for subject, stream in ((subjects.dlq(job.service), subjects.STREAM_DLQ), *job.other):
        ack = await svc.js.publish(subject.replace("*", batch), b"{}", headers=msg_id(), stream=stream)
        assert ack.stream == stream
    assert await svc.js.account_info()  # $JS.API.INFO
    assert svc.errors == [] and all(u.errors == [] for u in upstreams)


async def test_generator_reads_and_writes_its_kv_buckets(connect: Connect) -> None:
    gen = await connect("generator")
    batch = new_batch_id()
    starts = await gen.js.key_value(KV_STARTS)
    with pytest.raises(KeyNotFoundError):
        await starts.get(batch)
    await starts.put(batch, b"accepted")
    assert (await starts.get(batch)).value == b"accepted"
    await (await gen.js.key_value(KV_CANCELS)).put(batch, b"user asked")
    assert gen.errors == []


async def watch_cancels_until(svc: Conn, batch_ids: set[str], within_s: float = 5.0) -> None:
    """Run the services' own cancel watcher until it has seen every id in `batch_ids`."""
    cancelled = CancelledBatches()
    watching = asyncio.create_task(cancelled.watch(svc.js))
    try:
        deadline = asyncio.get_running_loop().time() + within_s
        while not all(b in cancelled for b in batch_ids):
            assert asyncio.get_running_loop().time() < deadline, f"watcher stalled; errors: {svc.errors}"
            await asyncio.sleep(0.02)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


@pytest.mark.parametrize("service", ["chat-runner", "judge"])
async def test_model_calling_services_watch_the_cancels_bucket(connect: Connect, service: str) -> None:
    batch = new_batch_id()
    gen = await connect("generator")
    await (await gen.js.key_value(KV_CANCELS)).put(batch, b"user asked")
    svc = await connect(service)
    await watch_cancels_until(svc, {batch})
    assert svc.errors == []


async def test_model_calling_services_share_leases_and_their_notices(connect: Connect) -> None:
    # The judge keeps its lease idle; chat-runner's wanted notice makes it give it back, and the
    # freed notice wakes chat-runner (neither would be in time otherwise).
    judge, runner = await connect("judge"), await connect("chat-runner")

    def leases(svc: Conn, **reuse: float) -> SharedLeases:
        store = KvSlotStore(lambda: svc.js, KV_LEASES, nc=lambda: svc.nc)
        return SharedLeases(store, ttl_s=LEASE_TTL_S, holder="test", **reuse)

    keeper, waiter = leases(judge, reuse_idle_s=30), leases(runner, watched_poll_s=30)
    key = batch_key("http://permissions.example/v1", new_batch_id())
    async with keeper.hold(key, 1):
        pass
    async with asyncio.timeout(5):
        async with waiter.hold(key, 1):
            pass
    await keeper.aclose()
    await waiter.aclose()
    assert judge.errors == [] and runner.errors == []


async def test_cancel_watcher_answers_flow_control(connect: Connect) -> None:
    # A few MB in the bucket make the server pause the watcher until it replies on $JS.FC.<stream>.>;
    # a denied reply stalls it for good.
    gen = await connect("generator")
    kv = await gen.js.key_value(KV_CANCELS)
    batches = {new_batch_id() for _ in range(24)}
    for batch in batches:
        await kv.put(batch, b"x" * 256_000)
    runner = await connect("chat-runner")
    await watch_cancels_until(runner, batches)
    assert runner.errors == []


async def test_recorder_reads_back_the_event_a_max_deliveries_advisory_names(connect: Connect) -> None:
    scorer, rec = await connect("scorer"), await connect("recorder")
    subject = subjects.batch_event(new_batch_id(), "prompt", "scored")
    ack = await scorer.js.publish(subject, b"{}", headers=msg_id(), stream=subjects.STREAM_EVENTS)
    # As services.recorder.streams.StreamOriginals does.
    assert (await rec.js.get_msg(subjects.STREAM_EVENTS, ack.seq)).subject == subject
    assert rec.errors == [] and scorer.errors == []


# -- and nothing else ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "subject"),
    [
        ("chat-runner", "evalbus.v1.batch.b1.prompt.judged"),
        ("client", "evalbus.v1.batch.b1.prompt.judged"),
        ("generator", "evalbus.v1.batch.b1.prompt.scored"),
        ("judge", "evalbus.v1.batch.b1.prompt.responded"),
        ("scorer", "evalbus.v1.batch.b1.batch.completed"),
        ("recorder", "evalbus.v1.batch.b1.batch.accepted"),
        ("client", f"{subjects.control('judge')}.pause"),  # health queries only
        ("operator", "evalbus.v1.batch.b1.prompt.queued"),  # it asks the recorder to re-drive, no more
        ("operator", f"{subjects.control('judge')}.pause"),
        ("scorer", subjects.dlq("judge")),
        ("provisioner", "evalbus.v1.batch.b1.start.requested"),
        ("chat-runner", f"$KV.{KV_CANCELS}.b1"),  # only the generator records a cancel
    ],
)
async def test_role_cannot_publish_what_another_produces(connect: Connect, role: str, subject: str) -> None:
    await assert_publish_denied(await connect(role), subject)


@pytest.mark.parametrize(
    ("role", "subject"),
    [
        ("client", "evalbus.v1.batch.>"),
        ("chat-runner", "evalbus.v1.batch.>"),
        ("provisioner", "evalbus.v1.batch.>"),
        ("judge", "_INBOX.chat-runner.>"),
        ("client", subjects.api(">")),  # cannot pose as the recorder's API
        ("judge", subjects.api(">")),
        ("judge", f"{subjects.control('chat-runner')}.>"),  # nor as another service's health
        ("judge", "$SRV.PING.evalbus-recorder"),
        ("client", "_INBOX.>"),  # other users' replies: reports, samples
        ("client", "_INBOX.provisioner.>"),
        ("client", "_INBOX.recorder.>"),
        ("provisioner", "_INBOX.client.>"),
        ("client", "_INBOX.operator.>"),
        ("operator", "_INBOX.client.>"),
        ("operator", subjects.api(">")),
        ("provisioner", "_INBOX.>"),
    ],
)
async def test_role_cannot_subscribe_beyond_its_own(connect: Connect, role: str, subject: str) -> None:
    await assert_subscribe_denied(await connect(role), subject)


async def test_service_cannot_fetch_from_another_services_durable(connect: Connect) -> None:
    runner = await connect("chat-runner")
    sub = await runner.js.pull_subscribe_bind(
        durable=JUDGE_RESPONDED.durable, stream=JUDGE_RESPONDED.stream, inbox_prefix=b"_INBOX.chat-runner."
    )
    with pytest.raises(TimeoutError):
        await sub.fetch(1, timeout=DENIAL_WAIT_S)
    await runner.violation(f'Publish to "$JS.API.CONSUMER.MSG.NEXT.{JUDGE_RESPONDED.stream}.{JUDGE_RESPONDED.durable}"')


async def test_inbox_prefix_without_trailing_dot_is_outside_the_services_inbox(connect: Connect) -> None:
    # nats-py appends the nuid to `inbox_prefix` as is: b"_INBOX.scorer" gives "_INBOX.scorerAbC...".
    scorer = await connect("scorer")
    sub = await scorer.js.pull_subscribe_bind(
        durable=SCORER_JUDGED.durable, stream=SCORER_JUDGED.stream, inbox_prefix=b"_INBOX.scorer"
    )
    await scorer.nc.flush()
    await scorer.violation('Permissions Violation for Subscription to "_INBOX.scorer')
    await sub.unsubscribe()


# -- the users' CLI --------------------------------------------------------------------------


async def test_client_starts_and_cancels_a_batch_and_follows_it(connect: Connect) -> None:
    client = await connect("client")
    batch = new_batch_id()
    got: list[str] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg.subject)

    await client.nc.subscribe(subjects.progress(batch), cb=on_msg)
    await client.nc.subscribe(subjects.batch_lifecycle(batch), cb=on_msg)
    for subject in (subjects.start_requested(batch), subjects.cancel_requested(batch)):
        ack = await client.js.publish(subject, b"{}", headers=msg_id(), stream=subjects.STREAM_EVENTS)
        assert ack.stream == subjects.STREAM_EVENTS

    gen, rec = await connect("generator"), await connect("recorder")
    accepted = subjects.batch_event(batch, "batch", "accepted")
    await gen.js.publish(accepted, b"{}", headers=msg_id(), stream=subjects.STREAM_EVENTS)
    await rec.js.publish(subjects.progress(batch), b"{}", headers=msg_id(), stream=subjects.STREAM_PROGRESS)
    for _ in range(100):
        if len(got) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(got) == sorted([accepted, subjects.progress(batch)])
    assert client.errors == [] and gen.errors == [] and rec.errors == []


async def test_client_replies_arrive_in_its_own_inbox_only(connect: Connect) -> None:
    client = await connect("client")
    seen: list[str] = []

    async def on_msg(msg: Msg) -> None:
        seen.append(msg.subject)

    await client.nc.subscribe("_INBOX.client.>", cb=on_msg)
    await client.nc.flush()
    runner, prov = await connect("chat-runner"), await connect("provisioner")
    await runner.js.account_info()  # replies to _INBOX.chat-runner.<...>, as do the events it fetches
    await prov.js.account_info()
    await client.js.publish(subjects.start_requested(new_batch_id()), b"{}", headers=msg_id())
    await asyncio.sleep(0.1)
    assert seen and all(s.startswith("_INBOX.client.") for s in seen), seen
    assert client.errors == [] and runner.errors == [] and prov.errors == []


def test_any_password_survives_the_config(auth_server: AuthServer) -> None:
    # The module's server started with these (the fixture's `nats-server -t` passed) and every
    # role logs in with its own in the tests above; here the quoting itself.
    for password in AWKWARD_PASSWORDS.values():
        assert nats_config.quoted(password).startswith('"')
    assert nats_config.quoted('a "b" \\c') == '"a \\"b\\" \\\\c"'
    with pytest.raises(ValueError, match="control"):
        nats_config.quoted("a\x00b")


async def test_awkward_passwords_log_in(connect: Connect) -> None:
    for role in AWKWARD_PASSWORDS:
        conn = await connect(role)
        assert conn.nc.is_connected and conn.errors == []


async def test_late_joiner_reads_the_last_progress_snapshot(connect: Connect) -> None:
    """README: `nats sub 'evalbus.v1.progress.<id>' --stream EVALBUS_PROGRESS --last-per-subject`."""
    rec, client = await connect("recorder"), await connect("client")
    batch = new_batch_id()
    for done in (1, 2, 3):
        body = orjson.dumps({"done": done})
        await rec.js.publish(subjects.progress(batch), body, headers=msg_id(), stream=subjects.STREAM_PROGRESS)
    info = await client.js.stream_info(subjects.STREAM_PROGRESS)
    assert info.config.name == subjects.STREAM_PROGRESS
    # As the nats CLI does: an ephemeral push consumer with flow control and heartbeats, no acks.
    for kwargs in ({"flow_control": True, "idle_heartbeat": 5.0}, {"ordered_consumer": True}):
        sub = await client.js.subscribe(
            subjects.progress(batch),
            stream=subjects.STREAM_PROGRESS,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            manual_ack=True,
            **kwargs,  # type: ignore[arg-type]
        )
        msg = await sub.next_msg(timeout=5)
        assert orjson.loads(msg.data) == {"done": 3}
        await sub.unsubscribe()
    assert client.errors == [] and rec.errors == []


async def test_late_joiner_answers_flow_control(connect: Connect) -> None:
    # Some MB of snapshots make the server pause the consumer until it replies on $JS.FC.<stream>.>.
    rec, client = await connect("recorder"), await connect("client")
    batches = [new_batch_id() for _ in range(24)]
    for batch in batches:
        body = orjson.dumps({"pad": "x" * 200_000})
        await rec.js.publish(subjects.progress(batch), body, headers=msg_id(), stream=subjects.STREAM_PROGRESS)
    got: set[str] = set()
    sub = await client.js.subscribe(
        subjects.progress("*"),
        stream=subjects.STREAM_PROGRESS,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ordered_consumer=True,
    )
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not set(batches) <= got:
            assert asyncio.get_running_loop().time() < deadline, f"stalled; errors: {client.errors}"
            msg = await sub.next_msg(timeout=5)
            got.add(msg.subject.rsplit(".", 1)[-1])
    finally:
        await sub.unsubscribe()
    assert client.errors == []


@pytest.mark.parametrize(
    "subject",
    [
        f"$JS.API.STREAM.INFO.{subjects.STREAM_EVENTS}",
        f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_EVENTS}",
        f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_DLQ}.x.evalbus.v1.dlq.judge",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{subjects.STREAM_PROGRESS}.mine",
        f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_PROGRESS}.x",
        f"$JS.API.STREAM.MSG.GET.{subjects.STREAM_PROGRESS}",
        f"$JS.API.STREAM.PURGE.{subjects.STREAM_PROGRESS}",
        "$JS.API.INFO",
        f"$JS.FC.{subjects.STREAM_EVENTS}.x.1",
    ],
)
async def test_client_jetstream_api_is_the_progress_read_only(connect: Connect, subject: str) -> None:
    client = await connect("client")
    with pytest.raises(TimeoutError):
        await client.nc.request(subject, b"{}", timeout=DENIAL_WAIT_S)
    await client.violation(f'Permissions Violation for Publish to "{subject}"')


async def micro_replies(client: Conn, subject: str, wait_s: float = 1.0) -> list[dict[str, object]]:
    """Every reply to one request, as `nats micro ls` / `nats micro info` gather them."""
    inbox = client.nc.new_inbox()
    sub = await client.nc.subscribe(inbox)
    await client.nc.publish(subject, b"", reply=inbox)
    replies: list[dict[str, object]] = []
    with contextlib.suppress(TimeoutError):
        while True:
            replies.append(orjson.loads((await sub.next_msg(timeout=wait_s)).data))
    await sub.unsubscribe()
    return replies


@pytest.fixture
async def recorder_services(connect: Connect, servers) -> AsyncIterator[Conn]:  # type: ignore[no-untyped-def]
    """The recorder's two micro services on one connection, as services/recorder/app.py runs them,
    with its query API on the session's real database."""
    rec = await connect("recorder")
    engine = create_async_engine(servers.database_url)

    class OnePrompt:
        asked: list[str] = []  # the batches it was asked to re-drive

        async def redrive(self, batch_id: str, token: str) -> ResumeResult:
            self.asked.append(batch_id)
            # What Redriver.redrive does with a prompt the database says never got an answer.
            subject = subjects.batch_event(batch_id, "prompt", "queued")
            headers = {"Nats-Msg-Id": f"redrive-{token}"}
            await rec.js.publish(subject, b"{}", headers=headers, stream=subjects.STREAM_EVENTS)
            return ResumeResult(batch_id=batch_id, redriven=1, by_event={"prompt.queued": 1})

    health = await Health("recorder", lambda: rec.nc).serve()
    redriver = OnePrompt()
    api = await start_api(rec.nc, engine, redriver)
    await rec.nc.flush()
    rec.redriven = redriver.asked  # type: ignore[attr-defined]
    try:
        yield rec
    finally:
        await api.stop()
        await health.stop()
        await engine.dispose()


@pytest.mark.parametrize("user", ["client", "operator"])
async def test_cli_users_call_every_query_endpoint(recorder_services: Conn, connect: Connect, user: str) -> None:
    rec, client = recorder_services, await connect(user)
    batch = new_batch_id()
    for endpoint in ("status", "report", "quality"):  # an unknown batch is a 404: the query got there and back
        with pytest.raises(cli.ApiError) as err:
            await cli.query(client.nc, endpoint, batch, timeout_s=5)
        assert err.value.code == "404", endpoint
    with pytest.raises(cli.ApiError) as err:
        await cli.fetch_samples(client.nc, SamplesQuery(batch_id=batch))
    assert err.value.code == "404"
    assert isinstance(await cli.fetch_history(client.nc, HistoryQuery(limit=1)), BatchHistory)
    assert rec.errors == [] and client.errors == []


async def test_client_is_refused_resume(recorder_services: Conn, connect: Connect) -> None:
    """Resume re-drives work: the locked-down config refuses it to every client user."""
    rec, client = recorder_services, await connect("client")
    subject = subjects.api("batch.resume")
    with pytest.raises(TimeoutError):
        await client.nc.request(
            subject, orjson.dumps({"batch_id": new_batch_id(), "token": "t"}), timeout=DENIAL_WAIT_S
        )
    await client.violation(f'Permissions Violation for Publish to "{subject}"')
    assert rec.redriven == []  # type: ignore[attr-defined]  # the recorder never heard of it


async def test_operator_resumes_a_batch(recorder_services: Conn, connect: Connect) -> None:
    rec, operator = recorder_services, await connect("operator")
    batch = new_batch_id()
    result = await cli.resume(operator.nc, batch, "t1")
    assert (result.batch_id, result.redriven) == (batch, 1)
    assert rec.redriven == [batch]  # type: ignore[attr-defined]
    assert rec.errors == [] and operator.errors == []


async def test_operator_starts_cancels_and_follows_a_batch_as_a_client_does(connect: Connect) -> None:
    operator = await connect("operator")
    batch = new_batch_id()
    await operator.nc.subscribe(subjects.progress(batch))
    await operator.nc.subscribe(subjects.batch_lifecycle(batch))
    for subject in (subjects.start_requested(batch), subjects.cancel_requested(batch)):
        ack = await operator.js.publish(subject, b"{}", headers=msg_id(), stream=subjects.STREAM_EVENTS)
        assert ack.stream == subjects.STREAM_EVENTS
    await operator.nc.flush()
    assert operator.errors == []


async def test_client_pings_and_inspects_the_recorders_micro_services(
    recorder_services: Conn, connect: Connect
) -> None:
    rec, client = recorder_services, await connect("client")
    for verb in ("PING", "INFO", "STATS"):
        for subject in (f"$SRV.{verb}", f"$SRV.{verb}.evalbus-recorder"):
            replies = [r for r in await micro_replies(client, subject) if r.get("name") == "evalbus-recorder"]
            assert len(replies) == 2, (subject, replies)  # the query API and the health service
    endpoints = {
        e["subject"]  # type: ignore[index]
        for r in await micro_replies(client, "$SRV.INFO.evalbus-recorder")
        for e in r["endpoints"]  # type: ignore[union-attr,attr-defined]
    }
    assert subjects.api("batch.report") in endpoints and f"{subjects.control('recorder')}.status" in endpoints
    assert rec.errors == [] and client.errors == []


@pytest.mark.parametrize("service", SERVICES)
async def test_service_answers_health_queries_from_the_client(connect: Connect, service: str) -> None:
    svc, client = await connect(service), await connect("client")
    micro = await Health(service, lambda: svc.nc).serve()  # what every service runs
    await svc.nc.flush()  # its subscriptions are in place before the client asks
    try:
        status = await cli.service_status(client.nc, service)
        assert status["service"] == service and status["healthy"] is True, status
        ping = await client.nc.request(f"$SRV.PING.evalbus-{service}", b"", timeout=2)
        assert f"evalbus-{service}".encode() in ping.data
    finally:
        await micro.stop()
    assert svc.errors == [] and client.errors == []
