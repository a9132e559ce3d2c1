"""Hostile and malformed start commands: each gets a reason, none raises."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.inputs import BatchConfig, Case, StartBatchRequested, SuiteRef
from services.generator.logic import InvalidStart, plan_batch, read_start

SUBJECT = "evalbus.v1.batch.b-prop.start.requested"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=30,
)
VALID = StartBatchRequested(
    batch_id="b-prop", config=BatchConfig(model="m"), suite=SuiteRef(cases=[Case(prompt="hi")])
).model_dump(mode="json")


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_rejected_with_a_reason(data: bytes) -> None:
    out = read_start(SUBJECT, data)
    assert isinstance(out, InvalidStart) and out.reason and out.batch_id == "b-prop"
    rejection = out.rejection()
    assert rejection is not None and rejection.batch_id == "b-prop"


@given(json_values)
def test_arbitrary_json_never_raises(value: object) -> None:
    out = read_start(SUBJECT, json.dumps(value).encode())
    assert isinstance(out, InvalidStart | StartBatchRequested)


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=150)
@given(
    st.sampled_from(["config", "suite", "batch_id", "schema_version", "occurred_at"]),
    json_values | st.integers(1_000, 200_000).map(lambda n: "x" * n),
)
def test_a_valid_start_with_one_field_replaced(field: str, value: object) -> None:
    out = read_start(SUBJECT, json.dumps(VALID | {field: value}).encode())
    if isinstance(out, StartBatchRequested):
        plan_batch(out)  # whatever got through validation still plans without raising
    else:
        assert out.reason


@given(st.text(min_size=1, max_size=30))
def test_odd_batch_ids_in_subjects(token: str) -> None:
    out = read_start(f"evalbus.v1.batch.{token}.start.requested", b"{}")
    assert isinstance(out, InvalidStart)
    if out.rejection() is None:  # cannot be told on a subject: only the dead letter keeps it
        assert not token.replace("-", "").replace("_", "").isalnum() or len(token) > 64 or not token.isascii()


def test_deeply_nested_json_is_a_rejection_not_a_crash() -> None:
    deep = "[" * 5000 + "]" * 5000
    out = read_start(SUBJECT, json.dumps(VALID | {"config": "x"}).encode().replace(b'"x"', deep.encode()))
    assert isinstance(out, InvalidStart)
