"""A fake model under test for chat-runner unit tests: one canned result, every call recorded."""

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.runtime.models.client import CallOptions, Completion, ModelCallError


@dataclass(frozen=True)
class Call:
    messages: list[dict[str, str]]
    opts: CallOptions
    batch_id: str
    batch_limit: int
    tags: dict[str, str]


@dataclass
class FakeModel:
    """Answers every call with `result` (a Completion), or raises it (a ModelCallError)."""

    result: Completion | ModelCallError = field(default_factory=lambda: completion("Paris"))
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
        self.calls.append(Call(messages, opts, batch_id, batch_limit, dict(tags)))
        if isinstance(self.result, ModelCallError):
            raise self.result
        return self.result


def completion(text: str, tokens_in: int = 10, tokens_out: int = 3) -> Completion:
    return Completion(text, "stop", tokens_in, tokens_out, latency_ms=12.5, attempts=1)
