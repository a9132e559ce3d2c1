"""A fake judge model for unit tests: answers single and batched judge prompts from the prompt
text alone, with a deterministic score per (answer, criterion), and records every call."""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

from contracts.enums import FailureCategory
from contracts.events import PromptResponded
from contracts.inputs import BatchConfig
from services.fake_model.testing import read_judge_prompt
from services.runtime.models.client import CallOptions, Completion, ModelCallError
from services.runtime.models.endpoints import Endpoint, Endpoints
from tests.factories import BatchEvents

# The endpoints the judge under test may call (its fake model stands in for the HTTP call).
ENDPOINTS = Endpoints(
    [Endpoint("http://judge.test/v1", name="judge"), Endpoint("http://model.test/v1", name="default")]
)


def score(answer: str, criterion: str) -> int:
    return sum(map(ord, answer + criterion)) % 10 + 1


def judgment(answer: str, criterion: str) -> dict[str, object]:
    s = score(answer, criterion)
    return {
        "criterion": criterion,
        "score": s,
        "passed": s >= 7,
        "reasoning": f"{criterion} of {answer[:10]}",
        "confidence": 0.5,
        "suggestions": [],
    }


@dataclass
class Call:
    answers: list[str]
    criteria: list[str]
    batched: bool
    batch_id: str
    schema: str
    tags: dict[str, str]


@dataclass
class FakeJudge:
    """`broken(call)` makes a reply unusable; `fail(call)` raises instead (a ModelCallError or any)."""

    broken: Callable[[Call], bool] = lambda call: False
    fail: Callable[[Call], BaseException | None] = lambda call: None
    usage: tuple[int, int] = (1000, 90)
    calls: list[Call] = field(default_factory=list)

    async def complete(
        self,
        messages: list[dict[str, str]],
        opts: CallOptions,
        *,
        batch_id: str,
        batch_limit: int,
        tags: Mapping[str, str],
    ) -> Completion:
        user = messages[-1]["content"]
        assert opts.response_format is not None
        schema = opts.response_format["json_schema"]["name"]
        prompt = read_judge_prompt(user)
        criteria, items = prompt.criteria, prompt.answers
        call = Call([a for _, a in items], criteria, prompt.batched, batch_id, schema, dict(tags))
        self.calls.append(call)
        if (exc := self.fail(call)) is not None:
            raise exc
        if not prompt.batched:
            reply: object = {"judgments": [judgment(items[0][1], c) for c in criteria]}
        else:
            reply = {"results": [{"id": i, "judgments": [judgment(a, c) for c in criteria]} for i, a in items]}
        text = orjson.dumps(reply).decode()
        if self.broken(call):
            text = text[: len(text) // 2]
        return Completion(text, "stop", self.usage[0], self.usage[1], 12.5, 1)


def unavailable(call: Call) -> ModelCallError:
    exc = ModelCallError(FailureCategory.SERVER_ERROR, "HTTP 500: down", retryable=True)
    exc.attempts = 3
    return exc


def responded(batch_id: str, i: int, answer: str | None = None, **cfg: object) -> PromptResponded:
    """The i-th answer of a batch judged by gpt-4o-mini on accuracy and clarity; `cfg` overrides the config."""
    config = BatchConfig(**{"model": "m", "judge_model": "gpt-4o-mini", "criteria": ["accuracy", "clarity"], **cfg})  # type: ignore[arg-type]
    return BatchEvents(batch_id, config=config).responded(
        i, answer if answer is not None else f"Answer number {i} " + "x" * (i * 7)
    )
