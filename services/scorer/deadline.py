"""One answer's time limit for its user patterns and schemas, and matching a pattern under it.

User patterns may backtrack: they match with the `regex` engine, which takes a timeout and
releases the GIL meanwhile, so a slow pattern ends as a `timeout` verdict off the event loop.
"""

import time

import regex


class PatternTimeout(Exception):
    """A user pattern (or schema) did not finish within the answer's time limit."""


class Deadline:
    """The time left for one answer's pattern matching and schema checking."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left, or PatternTimeout when none are."""
        left = self._end - time.monotonic()
        if left <= 0:
            raise PatternTimeout
        return left


def match_pattern(pattern: "regex.Pattern[str]", text: str, mode: str, deadline: Deadline) -> "regex.Match[str] | None":
    """`pattern` on `text` within the deadline (PatternTimeout past it), GIL released meanwhile."""
    run = pattern.fullmatch if mode == "fullmatch" else pattern.search
    try:
        return run(text, timeout=deadline.left(), concurrent=True)
    except TimeoutError:
        raise PatternTimeout from None
