"""Every `evalbus.v1.api.` endpoint of the recorder, served by `start_api` as the recorder serves
it against the session's real NATS and PostgreSQL, under arbitrary request bodies: the reply is
a success or a bounded 4xx error that carries no SQL, paths or tracebacks, and the service keeps
answering. Hypothesis drives a synchronous test; the service and its client run on a loop of
their own in a thread."""

import asyncio
import secrets
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import nats
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from sqlalchemy.ext.asyncio import create_async_engine

from contracts import subjects
from services.recorder.api import start_api
from services.recorder.redrive import Redriver
from services.recorder.repository import record
from services.runtime.messaging.publishing import JetStreamPublisher
from tests.fuzz import payloads as p
from tests.integration.test_queries import events

pytestmark = pytest.mark.integration
ENDPOINTS = ["batch.status", "batch.report", "batch.quality", "batch.samples", "batch.resume", "batches.history"]
QUERIES = [e for e in ENDPOINTS if e != "batch.resume"]
MAX_ERROR_BYTES = 4096
LEAKS = ("select ", " from ", "insert ", "traceback", 'file "', ".py", "/work/", "/tmp/", "asyncpg", "sqlalchemy")
API = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


class Reply:
    def __init__(self, data: bytes, headers: dict[str, str] | None) -> None:
        self.data = data
        self.code = (headers or {}).get("Nats-Service-Error-Code")
        self.error = (headers or {}).get("Nats-Service-Error", "")


class Api:
    """The recorder's API and a client, on an event loop in a thread of their own."""

    def __init__(self, nats_url: str, database_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.batch_id = "b-fz-" + secrets.token_hex(3)
        self.run(self._start(nats_url, database_url))

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    async def _start(self, nats_url: str, database_url: str) -> None:
        self.engine = create_async_engine(database_url)
        async with self.engine.begin() as conn:
            await record(conn, events(self.batch_id, "s-fz", "e-fz"))
        self.server_nc = await nats.connect(nats_url)
        js = self.server_nc.jetstream()
        self.service = await start_api(
            self.server_nc, self.engine, Redriver(self.engine, JetStreamPublisher(lambda: js))
        )
        self.nc: Client = await nats.connect(nats_url)

    async def _ask(self, endpoint: str, body: bytes) -> Reply:
        msg = await self.nc.request(subjects.api(endpoint), body, timeout=20)
        return Reply(msg.data, msg.headers)

    def ask(self, endpoint: str, body: bytes) -> Reply:
        return self.run(self._ask(endpoint, body))

    async def _stop(self) -> None:
        await self.service.stop()
        for nc in (self.nc, self.server_nc):
            if not nc.is_closed:
                await nc.close()
        await self.engine.dispose()

    def stop(self) -> None:
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def api(servers) -> Iterator[Api]:  # type: ignore[no-untyped-def]
    a = Api(servers.nats_url, servers.database_url)
    try:
        yield a
    finally:
        a.stop()


def assert_bounded(reply: Reply) -> None:
    if reply.code is None:
        orjson.loads(reply.data)  # a success is a JSON document
        return
    assert reply.code in ("400", "404"), f"{reply.code}: {reply.error[:300]}"
    size = len(reply.error.encode()) + len(reply.data)
    assert size < MAX_ERROR_BYTES, f"a {size}-byte error"
    lowered = reply.error.lower()
    assert not any(leak in lowered for leak in LEAKS), reply.error[:300]


def still_answering(api: Api) -> None:
    reply = api.ask("batch.status", orjson.dumps({"batch_id": api.batch_id}))
    assert reply.code is None and orjson.loads(reply.data)["batch_id"] == api.batch_id


def valid_body(api: Api, endpoint: str) -> dict[str, Any]:
    if endpoint == "batches.history":
        return {"limit": 5, "experiment": "e-fz"}
    if endpoint == "batch.samples":
        return {"batch_id": api.batch_id, "filters": ["passed=true"], "sort": "-score", "per_page": 5}
    if endpoint == "batch.resume":  # an unknown batch: a resume of the recorded one would re-drive it
        return {"batch_id": api.batch_id + "-unknown", "token": "fuzz"}
    return {"batch_id": api.batch_id}


# Text without NUL (an escape of it is fuzzed below, under the defect that fixes it).
clean_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=80)
clean_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31)
    | st.floats(allow_nan=False, allow_infinity=False)
    | clean_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(clean_text, inner, max_size=4),
    max_leaves=15,
)
filters = st.lists(
    st.one_of(
        clean_text,
        st.sampled_from(
            ["passed=", "status=", "metadata.", "criterion.accuracy=", "case_id=", "model=", "category="]
        ).flatmap(lambda k: clean_text.map(lambda v: k + v)),
    ),
    max_size=8,
)


def bodies(api: Api, endpoint: str) -> st.SearchStrategy[bytes]:
    valid = valid_body(api, endpoint)
    field_values = st.one_of(clean_values, filters, st.sampled_from(["-1", "index", "-score", "\u202e", "' OR 1=1 --"]))
    replaced = st.builds(
        lambda k, v: orjson.dumps(valid | {k: v}),
        st.sampled_from(sorted({*valid, "filters", "page", "per_page", "after_index", "sort", "limit", "status"})),
        field_values,
    )
    return st.one_of(
        st.binary(max_size=200).filter(lambda b: b"\x00" not in b),
        clean_values.map(orjson.dumps),
        replaced,
        st.integers(30, 3000).map(p.deep),
        st.just(orjson.dumps(valid)),
    )


@pytest.mark.parametrize("endpoint", QUERIES)
def test_a_query_gets_a_success_or_a_bounded_4xx_and_the_api_keeps_answering(api: Api, endpoint: str) -> None:
    @API
    @given(body=bodies(api, endpoint))
    def one(body: bytes) -> None:
        assert_bounded(api.ask(endpoint, body))

    one()
    still_answering(api)


NUL_OR_HUGE = [
    *(pytest.param('{"batch_id": "b-x\\u0000"}', e) for e in ("batch.status", "batch.report", "batch.quality")),
    pytest.param('{"batch_id": "b-x\\u0000"}', "batch.resume"),
    *(('{"batch_id": "b-x\\u0000"}', e) for e in ("batch.samples", "batches.history")),
    *(('{"batch_id": "\\ud800"}', e) for e in ENDPOINTS),
    pytest.param('{"experiment": "e\\u0000"}', "batches.history"),
    pytest.param('{"model": "m\\u0000"}', "batches.history"),
    pytest.param('{"batch_id": "BATCH", "filters": ["case_id=a\\u0000"]}', "batch.samples"),
    pytest.param('{"batch_id": "BATCH", "after_index": 1000000000000000000000000000000}', "batch.samples"),
    ('{"batch_id": "BATCH", "page": 1000000000000000000000000000000}', "batch.samples"),
    ('{"batch_id": "BATCH", "min_score": 1e999}', "batch.samples"),
    ('{"limit": 100000000000000000000}', "batches.history"),
]


@pytest.mark.parametrize(("body", "endpoint"), NUL_OR_HUGE)
def test_nul_escapes_and_huge_ints_get_a_bounded_400(api: Api, body: str, endpoint: str) -> None:
    reply = api.ask(endpoint, body.replace("BATCH", api.batch_id).encode())
    assert_bounded(reply)
    still_answering(api)


def test_resume_of_an_unknown_or_malformed_batch_is_a_bounded_4xx(api: Api) -> None:
    for body in [b'{"batch_id": "b-no-such-batch"}', b'{"batch_id": "b-x\\u0000"}', b'{"batch_id": "a.b.>"}', b"[]"]:
        reply = api.ask("batch.resume", body)
        assert reply.code in ("400", "404"), (body, reply.code, reply.data[:200])
        assert_bounded(reply)
    still_answering(api)


def test_resume_under_arbitrary_bodies(api: Api) -> None:
    @API
    @given(body=bodies(api, "batch.resume"))
    def one(body: bytes) -> None:
        assert_bounded(api.ask("batch.resume", body))

    one()
    still_answering(api)


# Last in the module: today it closes the service's connection, and the module's API with it.
MEGABYTE = [
    pytest.param("batch.samples", ["bogus=" + "x" * 50_000] * 20),  # each bad filter quoted back
    ("batch.samples", ["metadata.topic=" + "x" * 1000] * 1000),
    ("batches.history", ["x" * 1000] * 1000),
    ("batch.status", ["x" * 1000] * 1000),
]


@pytest.mark.parametrize(("endpoint", "filters"), MEGABYTE)
def test_a_one_megabyte_request_gets_a_bounded_error_and_the_api_keeps_answering(
    api: Api, endpoint: str, filters: list[str]
) -> None:
    reply = api.ask(endpoint, orjson.dumps(valid_body(api, endpoint) | {"filters": filters}))
    assert_bounded(reply)
    still_answering(api)
