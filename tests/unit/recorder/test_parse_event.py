"""What the recorder's parse step refuses (a dead letter) before anything reaches the database."""

import orjson
import pytest

from contracts import subjects
from contracts.events import BatchAccepted, PromptResponded, PromptScored, Usage
from contracts.inputs import BatchConfig, ChatMessage
from services.recorder.parsing import parse_event
from services.runtime.messaging.handling import Incoming
from tests.factories import BatchEvents


def _scored(batch_id: str, i: int) -> PromptScored:
    return BatchEvents(batch_id).scored(i)


CFG = BatchConfig(model="m")


def msg(subject: str, data: bytes) -> Incoming:
    return Incoming(subject, data)


def responded(**usage: object) -> PromptResponded:
    return PromptResponded(
        batch_id="b-1",
        prompt_id="b-1-000000",
        index=0,
        messages=[ChatMessage(role="user", content="q")],
        answer="a",
        model="m",
        usage=Usage(**usage),  # type: ignore[arg-type]
        config=CFG,
    )


def test_a_good_event_parses() -> None:
    evt = _scored("b-1", 3)
    assert parse_event(msg(evt.subject, evt.to_json())) == evt


def test_a_completion_on_the_subject_is_passed_by_unread() -> None:
    # The recorder makes completions itself; a forged one (even garbage) is neither stored nor parsed.
    assert parse_event(msg(subjects.batch_event("b-1", "batch", "completed"), b"FORGED")) is None


def _with(evt: PromptResponded, key: bytes, value: bytes) -> bytes:
    """`evt`'s wire form with the number after `key` replaced by `value`."""
    data = evt.to_json()
    start = data.index(key) + len(key)
    end = start
    while data[end : end + 1].isdigit():
        end += 1
    return data[:start] + value + data[end:]


@pytest.mark.parametrize(
    ("subject", "data", "says"),
    [
        (subjects.batch_event("b-2", "prompt", "scored"), _scored("b-1", 0).to_json(), "does not match"),
        (subjects.batch_event("b-1", "prompt", "failed"), _scored("b-1", 0).to_json(), "validation error"),
        (
            _scored("b-1", 0).subject,
            _scored("b-1", 0).model_copy(update={"prompt_id": "b-1-7"}).to_json(),
            "is not prompt 0",
        ),
        (_scored("b-1", 0).subject, _scored("b-1", 0).to_json().replace(b"[]", b'["\\u0000"]'), "NUL"),
        # numbers beyond their PostgreSQL columns are refused by the contract (integer, smallint)
        (_scored("b-1", 0).subject, _scored("b-1", 0).to_json().replace(b'"index":0', b'"index":2147483648'), "index"),
        (responded().subject, _with(responded(), b'"tokens_in":', b"2147483648"), "tokens_in"),
        (responded().subject, _with(responded(), b'"attempts":', b"32768"), "attempts"),
        (
            subjects.batch_event("b-1", "batch", "accepted"),
            BatchAccepted(batch_id="b-1", config=CFG, suite_name="s", total_prompts=3)
            .to_json()
            .replace(b'"total_prompts":3', b'"total_prompts":2147483648'),
            "total_prompts",
        ),
        (subjects.batch_event("b-1", "batch", "exploded"), b"{}", "no event type"),
        (
            subjects.batch_event("b-1", "batch", "rejected"),
            b'{"batch_id": "b-1", "reason": "r", "occurred_at": "0001-01-01T00:00:00+14:00"}',
            "between the years 1970 and 9000",
        ),
    ],
)
def test_refused(subject: str, data: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_event(msg(subject, data))


def test_judge_calls_beyond_smallint_are_refused() -> None:
    fields = {
        "batch_id": "b-1",
        "prompt_id": "b-1-000000",
        "index": 0,
        "judge_model": "j",
        "judgments": [],
        "usage": {},
        "answer": "a",
        "config": CFG.model_dump(),
        "calls": {"unbatched": 40_000},
    }
    with pytest.raises(ValueError, match="unbatched"):
        parse_event(msg(subjects.batch_event("b-1", "prompt", "judged"), orjson.dumps(fields)))
