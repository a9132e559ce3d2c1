"""Hostile payloads for the parse-and-handle paths: hypothesis strategies shared by the fuzz tests.

Raw bytes, JSON of the wrong shape, `\\u0000` and lone-surrogate escapes, huge integers, deep
nesting, very long strings, and valid events with one field replaced by any of those.
"""

from typing import Any

import orjson
from hypothesis import strategies as st

from contracts.base import Event
from contracts.enums import FailureCategory, Stage
from contracts.events import (
    CriterionJudgment,
    PromptFailed,
    PromptJudged,
    PromptQueued,
    PromptResponded,
    PromptScored,
    Usage,
)
from contracts.inputs import BatchConfig, ChatMessage

BATCH = "b-fuzz"
CFG = BatchConfig(model="m", judge_model="j", criteria=["accuracy"])

# JSON text fragments that no Python value round-trips to: pasted raw into a document.
ESCAPES = ('"\\u0000"', '"a\\u0000b"', '"\\ud800"', '"\\udfff x"', '"\\ud83d"', "1e999", "-0", "NaN")
HUGE_INTS = (2**63, -(2**63) - 1, 2**64, 10**30, 10**400)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.sampled_from(HUGE_INTS)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=50)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=max_leaves,
    )


def dumps(value: Any) -> bytes:
    """JSON that also carries ints beyond 64 bits (orjson refuses them)."""
    import json

    return json.dumps(value).encode()


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


def samples_of(evt: Event) -> dict[str, Any]:
    return orjson.loads(evt.to_json())


def prompt_queued(i: int = 0) -> PromptQueued:
    return PromptQueued(
        batch_id=BATCH,
        prompt_id=f"{BATCH}-{i:06d}",
        index=i,
        messages=[ChatMessage(role="user", content="q?")],
        config=CFG,
    )


def prompt_responded(i: int = 0) -> PromptResponded:
    return PromptResponded(
        batch_id=BATCH,
        prompt_id=f"{BATCH}-{i:06d}",
        index=i,
        messages=[ChatMessage(role="user", content="q?")],
        answer="a",
        model="m",
        usage=Usage(),
        config=CFG,
    )


def prompt_judged(i: int = 0) -> PromptJudged:
    return PromptJudged(
        batch_id=BATCH,
        prompt_id=f"{BATCH}-{i:06d}",
        index=i,
        judge_model="j",
        judgments=[CriterionJudgment(criterion="accuracy", score=7, passed=True, reasoning="ok", confidence=0.5)],
        usage=Usage(),
        answer="a",
        config=CFG,
    )


def prompt_scored(i: int = 0) -> PromptScored:
    return PromptScored(
        batch_id=BATCH, prompt_id=f"{BATCH}-{i:06d}", index=i, overall_score=7.0, passed=True, criteria_passed={}
    )


def prompt_failed(i: int = 0) -> PromptFailed:
    return PromptFailed(
        batch_id=BATCH,
        prompt_id=f"{BATCH}-{i:06d}",
        index=i,
        stage=Stage.CHAT,
        category=FailureCategory.TIMEOUT,
        error="t",
    )


def mutated(valid: Event) -> st.SearchStrategy[bytes]:
    """`valid` with one top-level field replaced (by any JSON value, an escape, a long string)."""
    doc = samples_of(valid)
    fields = sorted(doc)
    replacement = st.one_of(
        json_values().map(dumps),
        st.sampled_from(ESCAPES).map(str.encode),
        st.sampled_from(HUGE_INTS).map(lambda n: str(n).encode()),
        st.integers(10_000, 300_000).map(lambda n: b'"' + b"x" * n + b'"'),
        st.integers(30, 3000).map(deep),
    )

    def build(field: str, value: bytes) -> bytes:
        rest = {k: v for k, v in doc.items() if k != field}
        head = orjson.dumps(rest)[:-1]
        return head + (b"," if rest else b"") + orjson.dumps(field) + b":" + value + b"}"

    return st.builds(build, st.sampled_from(fields), replacement)


def hostile_bytes(valid: Event) -> st.SearchStrategy[bytes]:
    """Anything a publisher could put on the subject of `valid`."""
    return st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=50).map(lambda b: b + b"\x00" + b),
        json_values().map(dumps),
        st.sampled_from(ESCAPES).map(str.encode),
        st.integers(30, 5000).map(deep),
        mutated(valid),
        st.just(valid.to_json()),
    )
