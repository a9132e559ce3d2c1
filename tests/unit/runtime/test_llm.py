"""ChatClient against a real local aiohttp server that answers from a script."""

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import orjson
import pytest
from pydantic import SecretStr

from contracts.enums import FailureCategory
from contracts.events import PromptFailed, PromptQueued, PromptResponded
from contracts.ids import prompt_id
from contracts.inputs import BatchConfig, ChatMessage
from services.chat_runner.logic import run_prompt
from services.runtime.models.client import CallOptions, ChatClient, Completion, ModelCallError, parse_retry_after
from services.runtime.models.endpoints import Endpoint, Endpoints
from services.runtime.models.leases import LocalLeases
from services.runtime.settings import EndpointSetting, Settings
from tests.scripted_model import Reply, ScriptedModel, ok, ok_body, scripted_server

MSGS = [{"role": "user", "content": "hi there"}]


@pytest.fixture
async def model() -> AsyncIterator[ScriptedModel]:
    async with scripted_server() as scripted:
        yield scripted


@pytest.fixture
async def other() -> AsyncIterator[ScriptedModel]:
    """A second server: another endpoint, or a server of a client's own that would collect keys."""
    async with scripted_server() as scripted:
        yield scripted


def new_client(concurrency: int = 4) -> ChatClient:
    return ChatClient(endpoint_concurrency=concurrency, retry_base_s=0.01, retry_max_s=0.05)


async def call(client: ChatClient, opts: CallOptions, batch_limit: int = 2) -> Completion:
    return await client.complete(MSGS, opts, batch_id="b", batch_limit=batch_limit, tags={"X-Evalbus-Prompt-Id": "p1"})


async def test_success_uses_api_token_counts_and_sends_auth_tags_and_body(model: ScriptedModel) -> None:
    model.replies = [ok()]
    client = new_client()
    done = await call(client, model.opts(max_tokens=7, response_format={"type": "json_object"}))
    await client.aclose()
    assert (done.text, done.finish_reason, done.tokens_in, done.tokens_out, done.attempts) == (
        "hello",
        "stop",
        11,
        3,
        1,
    )
    seen = model.seen[0]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["x-evalbus-prompt-id"] == "p1"
    assert seen.headers["content-type"] == "application/json"
    assert seen.body == {
        "model": "m",
        "messages": MSGS,
        "temperature": 0.0,
        "max_tokens": 7,
        "response_format": {"type": "json_object"},
    }


async def test_no_api_key_sends_no_authorization(model: ScriptedModel) -> None:
    model.replies = [ok()]
    client = new_client()
    await call(client, model.opts(url=model.base_url + "/", key=None))  # a trailing slash is fine too
    await client.aclose()
    assert "authorization" not in model.seen[0].headers


async def test_missing_usage_is_counted_offline(model: ScriptedModel) -> None:
    model.replies = [ok("hello world", usage=False)]
    client = new_client()
    done = await call(client, model.opts())
    await client.aclose()
    assert done.tokens_out == 2 and done.tokens_in > 2


async def test_server_errors_are_retried_then_succeed(model: ScriptedModel) -> None:
    model.replies = [Reply(500), Reply(503), ok()]
    client = new_client()
    done = await call(client, model.opts())
    await client.aclose()
    assert done.attempts == 3 and len(model.seen) == 3


async def test_retries_are_bounded_and_reported(model: ScriptedModel) -> None:
    model.replies = [Reply(500, b"boom")]
    client = new_client()
    with pytest.raises(ModelCallError) as info:
        await call(client, model.opts())
    await client.aclose()
    assert info.value.category is FailureCategory.SERVER_ERROR and info.value.attempts == 3
    assert "HTTP 500: boom" in str(info.value) and len(model.seen) == 3


async def test_client_errors_are_not_retried(model: ScriptedModel) -> None:
    model.replies = [Reply(400, b'{"error": "bad"}')]
    client = new_client()
    with pytest.raises(ModelCallError) as info:
        await call(client, model.opts())
    await client.aclose()
    assert info.value.category is FailureCategory.CLIENT_ERROR and len(model.seen) == 1
    assert info.value.attempts == 1 and not info.value.retryable


async def test_408_is_a_retryable_timeout(model: ScriptedModel) -> None:
    model.replies = [Reply(408)]
    client = new_client()
    with pytest.raises(ModelCallError) as info:
        await call(client, model.opts(max_retries=1))
    await client.aclose()
    assert info.value.category is FailureCategory.TIMEOUT and info.value.attempts == 2


async def test_rate_limit_waits_for_retry_after_capped_by_retry_max(model: ScriptedModel) -> None:
    model.replies = [Reply(429, headers={"Retry-After": "600"}), ok()]
    client = new_client()
    started = time.monotonic()
    done = await asyncio.wait_for(call(client, model.opts()), 60)  # uncapped it would wait 600 s
    elapsed = time.monotonic() - started
    await client.aclose()
    assert done.attempts == 2 and elapsed >= 0.05  # capped by retry_max_s=0.05


async def test_rate_limit_retry_after_is_honoured_below_the_cap(model: ScriptedModel) -> None:
    model.replies = [Reply(429, headers={"Retry-After": "0.2"}), ok()]
    client = ChatClient(endpoint_concurrency=2, retry_base_s=0.0, retry_max_s=5.0)
    started = time.monotonic()
    done = await call(client, model.opts())
    elapsed = time.monotonic() - started
    await client.aclose()
    assert done.attempts == 2 and elapsed >= 0.2  # the backoff alone would be 0 s


async def test_rate_limit_without_retry_after_is_reported_as_such(model: ScriptedModel) -> None:
    model.replies = [Reply(429, b"slow down")]
    client = new_client()
    with pytest.raises(ModelCallError) as info:
        await call(client, model.opts(max_retries=0))
    await client.aclose()
    assert info.value.category is FailureCategory.RATE_LIMIT and info.value.retry_after_s is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_connections_are_retried_and_classified() -> None:
    client = new_client()
    opts = CallOptions(model="m", endpoint=Endpoint(f"http://127.0.0.1:{free_port()}/v1"), timeout_s=5, max_retries=2)
    with pytest.raises(ModelCallError) as info:
        await call(client, opts)
    await client.aclose()
    assert info.value.category is FailureCategory.CONNECTION and info.value.attempts == 3


async def test_dropped_connections_are_connection_errors(model: ScriptedModel) -> None:
    model.replies = [Reply(drop=True), ok()]
    client = new_client()
    done = await call(client, model.opts())
    assert done.attempts == 2
    model.replies = [Reply(drop=True)]
    with pytest.raises(ModelCallError) as info:
        await call(client, model.opts(max_retries=0))
    await client.aclose()
    assert info.value.category is FailureCategory.CONNECTION


async def test_each_attempt_has_its_own_timeout(model: ScriptedModel) -> None:
    model.replies = [Reply(delay_s=5), ok()]
    client = new_client()
    done = await call(client, model.opts(timeout_s=0.2))
    assert done.attempts == 2  # the first attempt timed out (its reply would have come after 5 s)
    model.replies = [Reply(delay_s=5)]
    with pytest.raises(ModelCallError) as info:
        await call(client, model.opts(timeout_s=0.1, max_retries=1))
    await client.aclose()
    assert info.value.category is FailureCategory.TIMEOUT and info.value.attempts == 2
    assert "no answer within 0.1s" in str(info.value)


async def test_unusable_bodies_are_bad_responses(model: ScriptedModel) -> None:
    client = new_client()
    for body in (b"{not json", b'{"choices": []}', orjson.dumps(ok_body()).replace(b'"hello"', b"42")):
        model.replies = [Reply(body=body)]
        with pytest.raises(ModelCallError) as info:
            await call(client, model.opts(max_retries=1))
        assert info.value.category is FailureCategory.BAD_RESPONSE and info.value.attempts == 2
    await client.aclose()


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = parse_retry_after(later)
    assert value is not None and 25 < value <= 30


async def test_connections_are_kept_alive_and_reused(model: ScriptedModel) -> None:
    model.replies = [ok()]
    client = new_client(concurrency=4)
    for _ in range(5):
        await call(client, model.opts())
    assert len(model.peers()) == 1  # one connection for five calls in a row
    model.replies = [Reply(body=orjson.dumps(ok_body()), delay_s=0.05)]
    for _ in range(2):
        await asyncio.gather(*(call(client, model.opts(), batch_limit=16) for _ in range(12)))
    await client.aclose()
    assert model.peak == 4  # the endpoint's limit
    assert len(model.peers()) <= 4  # a pool sized to the concurrency, not a connection per call


async def test_endpoint_failures_open_its_breaker_and_a_success_closes_it(model: ScriptedModel) -> None:
    changes: list[tuple[str, str, str]] = []
    model.replies = [Reply(503)] * 3 + [ok()]
    client = ChatClient(
        endpoint_concurrency=4,
        retry_base_s=0.01,
        retry_max_s=0.05,
        breaker_fail_max=2,
        breaker_reset_s=0.1,
        on_breaker_change=lambda ep, old, new: changes.append((ep, old, new)),
    )
    done = await call(client, model.opts(max_retries=3))
    await client.aclose()
    assert done.attempts == 4
    assert [c[1:] for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert changes[0][0] == model.base_url


async def test_client_errors_do_not_open_the_breaker(model: ScriptedModel) -> None:
    model.replies = [Reply(400)]
    client = ChatClient(endpoint_concurrency=4, retry_base_s=0.01, retry_max_s=0.05, breaker_fail_max=2)
    for _ in range(4):
        with pytest.raises(ModelCallError):
            await call(client, model.opts())
    assert client.breakers[model.base_url].state == "closed"
    await client.aclose()


async def test_per_batch_limits_hold_and_are_freed_when_a_batch_goes_idle(model: ScriptedModel) -> None:
    model.replies = [Reply(body=orjson.dumps(ok_body()), delay_s=0.02)]
    client = ChatClient(endpoint_concurrency=16, retry_base_s=0.01, retry_max_s=0.05)
    await asyncio.gather(*(call(client, model.opts()) for _ in range(10)))  # call() uses batch_limit=2
    await client.aclose()
    assert model.peak == 2
    assert isinstance(client.leases, LocalLeases) and len(client.leases.gates) == 0


def authorizations(server: ScriptedModel) -> list[str | None]:
    return [s.headers.get("authorization") for s in server.seen]


async def test_each_endpoint_gets_its_own_key_and_an_unlisted_url_none(
    model: ScriptedModel, other: ScriptedModel
) -> None:
    """Keys travel with the endpoint the operator configured, whatever URL a batch wrote; an
    unlisted URL (allowed by the operator) is called without any key."""
    model.replies = other.replies = [ok()]
    settings = Settings(
        endpoints={
            "a": EndpointSetting(url=model.base_url, api_key=SecretStr("key-a")),
            "b": EndpointSetting(url=model.base_url.replace("127.0.0.1", "localhost"), api_key=SecretStr("key-b")),
        },
        api_key=SecretStr("key-default"),
        allow_unlisted_endpoints=True,
    )
    endpoints = Endpoints.from_settings(settings)
    client = new_client()

    async def call_for(**config: object) -> None:
        endpoint = endpoints.for_model(BatchConfig(model="m", **config))  # type: ignore[arg-type]
        await call(client, CallOptions(model="m", endpoint=endpoint, timeout_s=5, max_retries=0))

    await call_for(endpoint="a")
    await call_for(base_url=model.base_url.upper().replace("/V1", "/v1") + "/")  # a's URL, spelled otherwise
    await call_for(endpoint="b")
    await call_for(base_url=other.base_url)  # a server of the client's own: unlisted
    await client.aclose()
    assert authorizations(model) == ["Bearer key-a", "Bearer key-a", "Bearer key-b"]
    assert authorizations(other) == [None]
    assert len(client.breakers) == 3  # pools and breakers stay per URL


async def test_a_redirect_is_not_followed_so_the_key_stays_with_its_endpoint(
    model: ScriptedModel, other: ScriptedModel
) -> None:
    model.replies = [Reply(307, headers={"Location": other.base_url + "/chat/completions"})]
    other.replies = [ok()]
    client = new_client()
    with pytest.raises(ModelCallError) as info:
        await call(client, model.opts(key="key-a"))
    await client.aclose()
    assert info.value.category is FailureCategory.CLIENT_ERROR and "HTTP 307" in str(info.value)
    assert authorizations(model) == ["Bearer key-a"] and other.seen == []


def queued(**config: object) -> PromptQueued:
    return PromptQueued(
        batch_id="b",
        prompt_id=prompt_id("b", 0),
        index=0,
        messages=[ChatMessage(role="user", content="hi")],
        config=BatchConfig(model="m", **config),  # type: ignore[arg-type]
    )


async def test_the_chat_runner_refuses_an_unlisted_url_before_any_call(
    model: ScriptedModel, other: ScriptedModel
) -> None:
    model.replies = other.replies = [ok()]
    endpoints = Endpoints.from_settings(Settings(model_base_url=model.base_url, api_key=SecretStr("sk-secret")))
    client = new_client()
    refused = await run_prompt(client, queued(base_url=other.base_url), endpoints)
    answered = await run_prompt(client, queued(), endpoints)
    await client.aclose()
    assert isinstance(refused, PromptFailed) and refused.category is FailureCategory.INVALID_INPUT
    assert refused.attempts == 0 and "is not a configured endpoint" in refused.error
    assert "sk-secret" not in refused.model_dump_json()
    assert other.seen == []
    assert isinstance(answered, PromptResponded) and authorizations(model) == ["Bearer sk-secret"]
