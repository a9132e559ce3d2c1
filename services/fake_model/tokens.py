"""The fake model's answers cut to a request's `max_tokens`. Counting itself is
`services.runtime.models.tokens`, the one counter every service uses."""

from services.runtime.models.tokens import count_tokens, encoding


def completion_tokens(text: str, max_tokens: int | None) -> tuple[str, int, bool]:
    """The answer cut to at most `max_tokens` tokens: (text, its token count, whether it was cut)."""
    n = count_tokens(text)
    if max_tokens is None or n <= max_tokens:
        return text, n, False
    tokens = encoding().encode_ordinary(text)
    return encoding().decode(tokens[:max_tokens]), max_tokens, True
