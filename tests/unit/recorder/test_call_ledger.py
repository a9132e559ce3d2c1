"""The recorder's side of the call ledger, without a database: which bills it parses, which it
takes for a batch, and the row each becomes."""

import orjson
import pytest

from contracts.enums import Stage
from contracts.events import CallBilled
from services.recorder import tables as t
from services.recorder.checks import prompt_index
from services.recorder.parsing import parse_event
from services.recorder.repository import rows_for
from services.recorder.tracker import screen_verdicts
from services.runtime.messaging.handling import Incoming, Refusal
from tests.factories import BatchEvents, sample

BATCH = BatchEvents("b-bill", 3)


def test_a_bill_parses_back_whole_and_keys_its_nats_msg_id_by_its_call_id() -> None:
    bill = sample(CallBilled)
    assert parse_event(Incoming(bill.subject, bill.to_json())) == bill
    assert bill.subject.endswith(".call.billed")
    assert bill.event_id == bill.call_id


def test_a_bill_naming_a_prompt_of_another_batch_or_no_prompt_id_is_refused() -> None:
    # (the last: Arabic-Indic digits, which str.isdigit accepts)
    for wrong in ("b-other-000000", "b-bill-0", "b-bill-00000x", "b-bill-" + "\u0660" * 5 + "\u0661"):
        bill = BATCH.billed(0, prompt_ids=["b-bill-000000", wrong])
        with pytest.raises(ValueError, match="is not the id of a prompt of batch"):
            parse_event(Incoming(bill.subject, bill.to_json()))


def test_a_bill_without_attempts_or_prompts_or_with_a_made_up_call_id_is_refused() -> None:
    good = orjson.loads(BATCH.billed(0).to_json())
    for change in ({"attempts": []}, {"prompt_ids": []}, {"call_id": "not-a-uuid", "event_id": "x"}):
        with pytest.raises(ValueError):
            parse_event(Incoming(BATCH.billed(0).subject, orjson.dumps(good | change)))


def test_prompt_index_reads_only_the_deterministic_ids() -> None:
    assert prompt_index("b-bill", "b-bill-000002") == 2
    assert prompt_index("b-bill", "b-bill-1234567") == 1234567
    assert prompt_index("b-bill", "b-bill-2") is None
    assert prompt_index("b-bill", "b-other-000002") is None


def test_bills_are_screened_like_prompt_events_by_their_highest_prompt() -> None:
    other = BatchEvents("b-later")
    events = [BATCH.billed(0, 2), BATCH.billed(1, 3), other.billed(0), BatchEvents("b-rejected").billed(0)]
    verdicts = screen_verdicts(events, {"b-bill": 3, "b-rejected": None})
    assert verdicts[0] is None
    assert verdicts[1] == Refusal("batch 'b-bill' has 3 prompts: no prompt 3")
    assert verdicts[2] == Refusal("batch 'b-later' not recorded yet", retry=True)
    assert verdicts[3] == Refusal("batch 'b-rejected' was rejected: it has no prompts")


def test_a_bill_is_one_ledger_row_keyed_by_its_call_id() -> None:
    bill = sample(CallBilled)
    [(table, row)] = rows_for(bill)
    assert table is t.model_calls
    assert row["call_id"] == bill.call_id and row["prompt_ids"] == bill.prompt_ids
    assert (row["stage"], row["outcome"], row["attempt_count"]) == (Stage.CHAT.value, "ok", 2)
    assert row["attempts"][0] == {
        "outcome": "rate_limit",
        "status": 429,
        "tokens_in": None,
        "tokens_out": None,
        "latency_ms": 2.0,
        "retry_in_s": 1.5,
        "reason": "HTTP 429: slow",
    }
    assert (row["tokens_in"], row["tokens_out"], row["cost_usd"]) == (bill.tokens_in, bill.tokens_out, bill.cost_usd)
