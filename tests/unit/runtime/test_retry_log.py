"""Retries and breaker transitions logged one structured line each (evalbus.retry, evalbus.breaker)."""

import logging
import re

import pytest

from services.runtime.models.client import ChatClient, ModelCallError
from tests.scripted_model import Reply, ok, scripted_server

MSGS = [{"role": "user", "content": "hi"}]


async def test_every_retry_logs_attempt_delay_outcome_and_circuit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="evalbus")
    client = ChatClient(
        endpoint_concurrency=2, retry_base_s=0.01, retry_max_s=0.05, breaker_fail_max=2, breaker_reset_s=0.1
    )
    async with scripted_server(Reply(503), Reply(429, headers={"Retry-After": "0.02"}), ok()) as model:
        done = await client.complete(MSGS, model.opts(max_retries=2), batch_id="b1", batch_limit=2, tags={})
        model.replies = [Reply(500)]
        with pytest.raises(ModelCallError):
            await client.complete(MSGS, model.opts(max_retries=1), batch_id="b2", batch_limit=2, tags={})
    await client.aclose()
    assert done.attempts == 3
    retries = [r for r in caplog.records if r.name == "evalbus.retry"]
    lines = [r.getMessage() for r in retries]
    url = re.escape(model.base_url)
    assert re.fullmatch(
        rf"retry endpoint={url} batch=b1 attempt=1/3 outcome=server_error status=503 delay_s=0\.\d+ circuit=closed",
        lines[0],
    )
    # The second failure tripped the breaker (threshold 2); Retry-After chose the delay.
    assert re.fullmatch(
        rf"retry endpoint={url} batch=b1 attempt=2/3 outcome=rate_limit status=429 delay_s=0\.020 circuit=open",
        lines[1],
    )
    assert (
        lines[2] == f"retry endpoint={model.base_url} batch=b1 attempt=3/3 outcome=ok status=- succeeded circuit=closed"
    )
    assert lines[-1] == (
        f"retry endpoint={model.base_url} batch=b2 attempt=2/2 outcome=server_error status=500 gave_up circuit=open"
    )
    assert retries[1].__dict__["delay_s"] == 0.02 and retries[1].__dict__["circuit"] == "open"  # also as fields
    transitions = [r.getMessage() for r in caplog.records if r.name == "evalbus.breaker"]
    assert transitions[:3] == [
        f"breaker endpoint={model.base_url} old=closed new=open failures=2 by=local",
        f"breaker endpoint={model.base_url} old=open new=half_open failures=2 by=local",
        f"breaker endpoint={model.base_url} old=half_open new=closed failures=0 by=local",
    ]
