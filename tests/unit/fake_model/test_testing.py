"""services/fake_model/testing.py: the helpers other components' tests use read the judge's real
prompts as the fake model does, and give the answers the fake model gives."""

from contracts.inputs import BatchConfig, ChatMessage
from services.fake_model.chat import chat_answer
from services.fake_model.criteria import FAKE_JUDGE_CRITERIA
from services.fake_model.testing import JudgePrompt, read_judge_prompt, support_answer
from services.judge.prompt import Item, build_batch_messages, build_messages, item_ids

CFG = BatchConfig(model="evalbus-fake", criteria=["accuracy", "clarity"])


def test_support_answer_is_the_fake_models_chat_reply() -> None:
    question = "My PulseBuds Pro stopped charging"
    assert support_answer(question) == chat_answer("evalbus-fake", question)
    assert support_answer(question, "evalbus-fake-judge") == chat_answer("evalbus-fake-judge", question)


def test_a_single_answer_prompt_is_read_back() -> None:
    user = build_messages(CFG, [ChatMessage(role="user", content="q?")], "the answer", None)[-1]["content"]
    assert read_judge_prompt(user) == JudgePrompt(["accuracy", "clarity"], [("", "the answer")], batched=False)


def test_a_batched_prompt_is_read_back_in_order() -> None:
    ids = item_ids(2)
    items = [Item(i, [ChatMessage(role="user", content=f"q {i}")], f"answer {i}", None) for i in ids]
    user = build_batch_messages(CFG, items, ["clarity"])[-1]["content"]
    assert read_judge_prompt(user) == JudgePrompt(["clarity"], [(i, f"answer {i}") for i in ids], batched=True)


def test_a_prompt_naming_no_criteria_gets_the_fake_judges_own() -> None:
    assert read_judge_prompt("no fences, no criteria line").criteria == list(FAKE_JUDGE_CRITERIA)
