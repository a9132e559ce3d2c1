import asyncio
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from contracts.enums import FailureCategory
from services.runtime.llm import CallOptions, ChatClient, ModelCallError, parse_retry_after


def ok_body(text: str = "hello", usage: bool = True) -> dict[str, object]:
    body: dict[str, object] = {
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
    }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3}
    return body


def client_with(responses: list[httpx.Response | Exception], seen: list[httpx.Request]) -> ChatClient:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = responses.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    return ChatClient(
        api_key="sk-test",
        endpoint_concurrency=4,
        retry_base_s=0.01,
        retry_max_s=0.05,
        transport=httpx.MockTransport(handler),
    )


OPTS = CallOptions(model="m", base_url="http://model.test/v1", timeout_s=5, max_retries=2)
MSGS = [{"role": "user", "content": "hi there"}]


async def call(client: ChatClient, opts: CallOptions = OPTS):  # type: ignore[no-untyped-def]
    return await client.complete(MSGS, opts, batch_id="b", batch_limit=2, tags={"X-Evalbus-Prompt-Id": "p1"})


async def test_success_uses_api_token_counts_and_sends_auth_and_tags() -> None:
    seen: list[httpx.Request] = []
    done = await call(client_with([httpx.Response(200, json=ok_body())], seen))
    assert (done.text, done.tokens_in, done.tokens_out, done.attempts) == ("hello", 11, 3, 1)
    assert seen[0].url.path == "/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-test"
    assert seen[0].headers["x-evalbus-prompt-id"] == "p1"


async def test_missing_usage_is_counted_offline() -> None:
    done = await call(client_with([httpx.Response(200, json=ok_body("hello world", usage=False))], []))
    assert done.tokens_out == 2 and done.tokens_in > 2


async def test_server_errors_are_retried_then_succeed() -> None:
    seen: list[httpx.Request] = []
    done = await call(
        client_with([httpx.Response(500), httpx.Response(503), httpx.Response(200, json=ok_body())], seen)
    )
    assert done.attempts == 3 and len(seen) == 3


async def test_retries_are_bounded_and_reported() -> None:
    with pytest.raises(ModelCallError) as info:
        await call(client_with([httpx.Response(500)] * 3, []))
    assert info.value.category is FailureCategory.SERVER_ERROR and info.value.attempts == 3


async def test_client_errors_are_not_retried() -> None:
    seen: list[httpx.Request] = []
    with pytest.raises(ModelCallError) as info:
        await call(client_with([httpx.Response(400, json={"error": "bad"})], seen))
    assert info.value.category is FailureCategory.CLIENT_ERROR and len(seen) == 1


async def test_rate_limit_waits_for_retry_after() -> None:
    seen: list[httpx.Request] = []
    client = client_with(
        [httpx.Response(429, headers={"Retry-After": "0.3"}), httpx.Response(200, json=ok_body())], seen
    )
    started = time.monotonic()
    done = await call(client)
    assert done.attempts == 2 and time.monotonic() - started >= 0.05  # capped by retry_max_s=0.05


async def test_transport_errors_and_timeouts_are_classified() -> None:
    with pytest.raises(ModelCallError) as info:
        await call(client_with([httpx.ConnectError("refused")] * 3, []))
    assert info.value.category is FailureCategory.CONNECTION
    with pytest.raises(ModelCallError) as info:
        await call(client_with([httpx.Response(200, content=b"{not json")] * 3, []))
    assert info.value.category is FailureCategory.BAD_RESPONSE


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = parse_retry_after(later)
    assert value is not None and 25 < value <= 30


async def test_endpoint_failures_open_its_breaker_and_a_success_closes_it() -> None:
    changes: list[tuple[str, str, str]] = []
    responses: list[httpx.Response | Exception] = [httpx.Response(503)] * 3 + [httpx.Response(200, json=ok_body())]
    client = client_with(responses, [])
    client._breaker_fail_max, client._breaker_reset_s = 2, 0.1
    client._on_breaker_change = lambda ep, old, new: changes.append((ep, old, new))
    done = await call(client, CallOptions(model="m", base_url="http://model.test/v1", timeout_s=5, max_retries=3))
    assert done.attempts == 4
    assert [c[1:] for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert changes[0][0] == "http://model.test/v1"


async def test_per_batch_limits_hold_and_are_freed_when_a_batch_goes_idle() -> None:
    running = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return httpx.Response(200, json=ok_body())

    client = ChatClient(
        api_key=None, endpoint_concurrency=16, retry_base_s=0.01, retry_max_s=0.05, transport=httpx.MockTransport(slow)
    )
    await asyncio.gather(*(call(client) for _ in range(10)))  # call() uses batch_limit=2
    assert peak == 2
    assert client._batch_slots == {}
