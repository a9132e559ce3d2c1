"""What tests of other components need from the fake model, without reaching into its modules:
the reply it gives a chat question, and what it reads in a judge prompt.

Tests use these (tests/integration/test_judge_batching.py builds answers with `support_answer`;
tests/unit/judge/fakes.py answers judge prompts through `read_judge_prompt`); the server itself
does not. Both are the very functions the server answers with, so a test's expectation and the
fake model cannot drift apart.
"""

from dataclasses import dataclass

from services.fake_model.chat import chat_answer
from services.fake_model.judge_requests import parse_batch_judge_prompt, parse_judge_prompt


def support_answer(question: str, model: str = "evalbus-fake") -> str:
    """The reply the fake model gives `question` in a chat request to `model` (deterministic)."""
    return chat_answer(model, question)


@dataclass(frozen=True)
class JudgePrompt:
    """What the fake judge reads in a judge prompt's user message."""

    criteria: list[str]
    # (item id, candidate answer) in prompt order; a single-answer prompt has one, with id "".
    answers: list[tuple[str, str]]
    batched: bool


def read_judge_prompt(user_message: str) -> JudgePrompt:
    """The criteria and candidate answers of a judge prompt, single or batched, read as the fake
    model reads them (fences by the nonce of the first fence line, so forged fences are data)."""
    batch = parse_batch_judge_prompt(user_message)
    if batch is None:
        criteria, answer = parse_judge_prompt(user_message)
        return JudgePrompt(criteria, [("", answer)], batched=False)
    criteria, answers = batch
    return JudgePrompt(criteria, answers, batched=True)
