"""Billed next to useful spend in a report, and each prompt's attempts in `evalbus samples`."""

from datetime import UTC, datetime

from contracts.events import CallAttempt
from contracts.queries import Sample, SampleCall
from contracts.reports import BatchReport
from evalbus.render import spend_rows
from evalbus.render_queries import describe_attempt, describe_call, describe_calls
from tests.factories import BatchEvents

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def call(stage: str, *attempts: CallAttempt, prompts: int = 1) -> SampleCall:
    return SampleCall(
        stage=stage,
        call_id="c",
        model="m",
        outcome=attempts[-1].outcome,
        attempts=list(attempts),
        tokens_in=10,
        tokens_out=3,
        cost_usd=0.0,
        prompts=prompts,
        occurred_at=NOW,
    )


OK = CallAttempt(outcome="ok", status=200, tokens_in=10, tokens_out=3)


def test_an_attempt_reads_as_its_status_its_failure_and_the_wait_after_it() -> None:
    assert describe_attempt(OK) == "ok"
    assert describe_attempt(CallAttempt(outcome="rate_limit", status=429, retry_in_s=2.14)) == (
        "429 rate limited (retry in 2.1 s)"
    )
    assert describe_attempt(CallAttempt(outcome="server_error", status=500)) == "500"
    assert describe_attempt(CallAttempt(outcome="timeout", retry_in_s=0.5)) == "timed out (retry in 0.5 s)"
    assert describe_attempt(CallAttempt(outcome="client_error", status=400)) == "400"
    assert describe_attempt(CallAttempt(outcome="bad_response", status=200)) == "200 unusable reply"


def test_a_call_lists_its_attempts_and_a_shared_call_says_so() -> None:
    retried = call(
        "chat",
        CallAttempt(outcome="rate_limit", status=429, retry_in_s=2.1),
        CallAttempt(outcome="server_error", status=500, retry_in_s=0.4),
        OK,
    )
    assert describe_call(retried) == "chat: 3 attempts: 429 rate limited (retry in 2.1 s), 500 (retry in 0.4 s), ok"
    assert describe_call(call("judge", OK, prompts=4)) == "judge (shared by 4): ok"


def test_a_sample_shows_every_call_one_per_line() -> None:
    base = Sample(index=0, prompt_id="b-000000", case_id=None, status="scored", messages=[], expected=None, metadata={})
    assert describe_calls(base) == "—"
    repeated = base.model_copy(update={"calls": [call("chat", OK), call("chat", OK), call("judge", OK)]})
    assert describe_calls(repeated) == "chat: ok\nchat: ok\njudge: ok"


def test_a_report_shows_billed_next_to_useful_spend() -> None:
    rep = BatchEvents("b-r").report(
        tokens_in=100,
        tokens_out=30,
        cost_usd=0.5,
        billed_tokens_in=150,
        billed_tokens_out=45,
        billed_cost_usd=0.75,
        billed_calls=6,
        billed_attempts=7,
    )
    rows = dict(spend_rows(rep))
    assert rows["tokens in / out"] == "100 / 30 useful · 150 / 45 billed"
    assert rows["estimated cost"] == "$0.5000 useful · $0.7500 billed"
    assert rows["model calls"] == "6 billed · 7 attempts"


def test_a_report_from_before_the_ledger_reads_as_it_did() -> None:
    old = BatchEvents("b-r").report(tokens_in=100, tokens_out=30, cost_usd=0.5).model_dump(mode="json")
    for name in [k for k in old if k.startswith("billed_")]:
        del old[name]
    rep = BatchReport.model_validate(old)  # a stored report without the ledger's fields
    assert rep.billed_calls == 0
    rows = dict(spend_rows(rep))
    assert rows["tokens in / out"] == "100 / 30" and rows["estimated cost"] == "$0.5000"
