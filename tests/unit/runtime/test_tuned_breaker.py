"""Per-batch breaker settings in the ChatClient: a batch's threshold and reset act on a breaker of
their own on the endpoint (shared by every batch with the same settings), beside the endpoint's
own breaker, which batches without settings share."""

import time
from collections.abc import AsyncIterator

import pytest

from services.runtime.models.client import CallOptions, ChatClient, Completion, ModelCallError
from tests.scripted_model import Reply, ScriptedModel, ok, scripted_server

MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def model() -> AsyncIterator[ScriptedModel]:
    async with scripted_server() as scripted:
        yield scripted


def new_client(changes: list[tuple[str, str, str]]) -> ChatClient:
    return ChatClient(
        endpoint_concurrency=4,
        retry_base_s=0.01,
        retry_max_s=0.05,
        breaker_fail_max=5,
        breaker_reset_s=30.0,
        on_breaker_change=lambda *change: changes.append(change),
    )


async def call(client: ChatClient, opts: CallOptions, batch_id: str = "b") -> Completion:
    return await client.complete(MSGS, opts, batch_id=batch_id, batch_limit=4, tags={})


async def test_a_batchs_threshold_opens_its_breaker_and_not_the_endpoints(model: ScriptedModel) -> None:
    changes: list[tuple[str, str, str]] = []
    client = new_client(changes)
    model.replies = [Reply(500)]
    with pytest.raises(ModelCallError):
        await call(client, model.opts(max_retries=0, breaker_fail_max=1), "tight")
    assert changes == [(model.base_url, "closed", "open")]  # one failure was this batch's threshold
    with pytest.raises(ModelCallError):
        await call(client, model.opts(max_retries=0), "plain")  # the service's threshold of 5
    assert changes == [(model.base_url, "closed", "open")]
    assert client.breakers[model.base_url].state == "closed"
    await client.aclose()


async def test_a_batchs_reset_is_the_pause_of_its_breaker(model: ScriptedModel) -> None:
    changes: list[tuple[str, str, str]] = []
    client = new_client(changes)
    model.replies = [Reply(500), ok()]
    opts = model.opts(max_retries=0, breaker_fail_max=1, breaker_reset_s=0.3)
    with pytest.raises(ModelCallError):
        await call(client, opts)
    started = time.monotonic()
    done = await call(client, opts)  # waits out the batch's 0.3 s, not the service's 30 s, then probes
    assert 0.25 <= time.monotonic() - started < 5
    assert done.text == "hello"
    assert [c[1:] for c in changes] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    await client.aclose()


async def test_batches_with_the_services_settings_or_the_same_ones_share_a_breaker(model: ScriptedModel) -> None:
    changes: list[tuple[str, str, str]] = []
    client = new_client(changes)
    model.replies = [Reply(500)]
    for batch_id in ("a", "b"):  # two batches with one setting: two failures, and it opens at the second
        with pytest.raises(ModelCallError):
            await call(client, model.opts(max_retries=0, breaker_fail_max=2), batch_id)
    assert changes == [(model.base_url, "closed", "open")]
    for _ in range(5):  # settings equal to the service's are the endpoint's own breaker
        with pytest.raises(ModelCallError):
            await call(client, model.opts(max_retries=0, breaker_fail_max=5, breaker_reset_s=30.0))
    assert client.breakers[model.base_url].state == "open"
    assert len(client._tuned_breakers) == 1
    await client.aclose()
