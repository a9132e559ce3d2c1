"""ChatClient's record of every attempt of a call (what the call ledger bills), against a
scripted model server."""

import pytest

from contracts.enums import FailureCategory
from services.runtime.models.client import ChatClient, Completion, ModelCallError
from tests.scripted_model import Reply, ok, scripted_server

MSGS = [{"role": "user", "content": "hi there"}]


def new_client() -> ChatClient:
    return ChatClient(endpoint_concurrency=4, retry_base_s=0.01, retry_max_s=0.2)


async def test_a_call_that_succeeds_at_once_has_one_ok_attempt_with_its_tokens() -> None:
    async with scripted_server(ok()) as model:
        client = new_client()
        done = await client.complete(MSGS, model.opts(), batch_id="b", batch_limit=2, tags={})
        await client.aclose()
    [only] = done.attempt_log
    assert (only.outcome, only.status, only.tokens_in, only.tokens_out, only.retry_in_s) == ("ok", 200, 11, 3, None)
    assert only.latency_ms == done.latency_ms > 0


async def test_each_retried_attempt_has_its_status_reason_and_the_wait_that_followed() -> None:
    script = [
        Reply(429, body=b"slow down", headers={"Retry-After": "0.1"}),
        Reply(500, body=b"oops"),
        Reply(200, body=b"not json"),
        ok(),
    ]
    async with scripted_server(*script) as model:
        client = new_client()
        done: Completion = await client.complete(MSGS, model.opts(max_retries=3), batch_id="b", batch_limit=2, tags={})
        await client.aclose()
    log = done.attempt_log
    assert done.attempts == len(log) == 4
    assert [(a.outcome, a.status) for a in log] == [
        ("rate_limit", 429),
        ("server_error", 500),
        ("bad_response", 200),
        ("ok", 200),
    ]
    assert log[0].retry_in_s == 0.1  # the server's Retry-After
    assert all(a.retry_in_s is not None and 0 <= a.retry_in_s <= 0.2 for a in log[:3])
    assert log[-1].retry_in_s is None
    assert log[0].reason == "HTTP 429: slow down" and log[1].reason == "HTTP 500: oops"
    assert [a.tokens_in for a in log] == [None, None, None, 11]  # only a usable answer's are known
    assert all(a.latency_ms > 0 for a in log)


async def test_a_call_that_runs_out_of_retries_carries_every_attempt_on_its_error() -> None:
    async with scripted_server(Reply(503, body=b"down")) as model:
        client = new_client()
        with pytest.raises(ModelCallError) as caught:
            await client.complete(MSGS, model.opts(max_retries=2), batch_id="b", batch_limit=2, tags={})
        await client.aclose()
    exc = caught.value
    assert exc.category is FailureCategory.SERVER_ERROR and exc.attempts == 3
    assert [(a.outcome, a.status) for a in exc.attempt_log] == [("server_error", 503)] * 3
    assert [a.retry_in_s is None for a in exc.attempt_log] == [False, False, True]


async def test_a_refused_request_is_one_attempt_without_a_wait() -> None:
    async with scripted_server(Reply(400, body=b"bad request")) as model:
        client = new_client()
        with pytest.raises(ModelCallError) as caught:
            await client.complete(MSGS, model.opts(), batch_id="b", batch_limit=2, tags={})
        await client.aclose()
    [only] = caught.value.attempt_log
    assert (only.outcome, only.status, only.retry_in_s, only.reason) == (
        "client_error",
        400,
        None,
        "HTTP 400: bad request",
    )


async def test_a_timeout_has_no_status_and_says_so() -> None:
    async with scripted_server(Reply(delay_s=1.0), ok()) as model:
        client = new_client()
        done = await client.complete(MSGS, model.opts(timeout_s=0.1), batch_id="b", batch_limit=2, tags={})
        await client.aclose()
    first, second = done.attempt_log
    assert (first.outcome, first.status) == ("timeout", None) and first.latency_ms >= 100
    assert first.reason == "no answer within 0.1s"
    assert second.outcome == "ok"
