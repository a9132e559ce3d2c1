"""What a model sends back is untrusted too: the events built from it must still be valid (the
contracts refuse NUL, lone surrogates and out-of-range counts), so the services keep the output
made storable instead of failing on it."""

import json

import pytest

from contracts.bounds import INT_MAX
from contracts.enums import FailureCategory
from contracts.events import PromptQueued, PromptResponded
from contracts.text import storable
from services.chat_runner.logic import run_prompt
from services.judge.grading import Failure
from services.judge.logic import failed
from services.judge.parsing import JudgeParseError, parse_judgment
from services.runtime.models.client import CallOptions, Completion, ModelCallError
from tests.unit.contract_samples import SAMPLES
from tests.unit.judge.fakes import ENDPOINTS


class FakeModel:
    def __init__(self, result: Completion | ModelCallError) -> None:
        self.result = result

    async def complete(self, messages: list[dict[str, str]], opts: CallOptions, **_: object) -> Completion:
        if isinstance(self.result, ModelCallError):
            raise self.result
        return self.result


QUEUED = SAMPLES[PromptQueued]
assert isinstance(QUEUED, PromptQueued)


async def test_an_answer_with_nul_and_lone_surrogates_is_kept_storable() -> None:
    done = Completion(
        text="ok\x00\ud800 done", finish_reason="stop\x00", tokens_in=2**40, tokens_out=-5, latency_ms=1.0, attempts=1
    )
    out = await run_prompt(FakeModel(done), QUEUED, ENDPOINTS)  # type: ignore[arg-type]
    assert isinstance(out, PromptResponded)
    assert out.answer == "ok\ufffd\ufffd done" and out.finish_reason == "stop\ufffd"
    assert (out.usage.tokens_in, out.usage.tokens_out) == (INT_MAX, 0)
    assert PromptResponded.model_validate_json(out.to_json()) == out


async def test_an_error_quoting_a_response_body_is_kept_storable() -> None:
    error = ModelCallError(FailureCategory.SERVER_ERROR, "HTTP 500: \x00" + "x" * 9000, retryable=False)
    out = await run_prompt(FakeModel(error), QUEUED, ENDPOINTS)  # type: ignore[arg-type]
    assert storable(out.error) == out.error and len(out.error) <= 4000


def test_a_judge_failure_keeps_its_raw_output_storable() -> None:
    responded = SAMPLES[PromptResponded]
    assert isinstance(responded, PromptResponded)
    out = failed(responded, Failure(FailureCategory.JUDGE_PARSE_ERROR, "bad\x00", 1, raw="{\x00" * 5000))
    assert storable(out.raw_output or "") == out.raw_output and len(out.raw_output or "") == 8000
    assert storable(out.error) == out.error


@pytest.mark.parametrize("field", ["reasoning", "suggestions"])
def test_judge_output_with_nul_is_a_parse_failure_not_a_crash(field: str) -> None:
    cfg = QUEUED.config
    items = [
        {"criterion": c, "score": 7, "passed": True, "reasoning": "r", "confidence": 0.5, "suggestions": []}
        for c in cfg.criteria
    ]
    items[0][field] = "a\x00b" if field == "reasoning" else ["a\x00b"]
    with pytest.raises(JudgeParseError, match="wrong shape"):
        parse_judgment(json.dumps({"judgments": items}), cfg)
