"""Enumerations shared by every service."""

from enum import StrEnum


class BatchStatus(StrEnum):
    """Lifecycle of a batch as the recorder sees it."""

    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL_FAILURE = "partial_failure"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self is not BatchStatus.RUNNING


class Stage(StrEnum):
    """Pipeline stage where a prompt succeeded or failed."""

    CHAT = "chat"
    JUDGE = "judge"
    SCORE = "score"


class FailureCategory(StrEnum):
    """Why a prompt failed; reports group failures by it."""

    TIMEOUT = "timeout"
    RATE_LIMIT = "rate_limit"
    SERVER_ERROR = "server_error"
    CLIENT_ERROR = "client_error"
    CONNECTION = "connection"
    BAD_RESPONSE = "bad_response"
    JUDGE_PARSE_ERROR = "judge_parse_error"
    BREAKER_OPEN = "breaker_open"
    CANCELLED = "cancelled"
    INVALID_INPUT = "invalid_input"
    DEAD_LETTER = "dead_letter"


DEFAULT_CRITERIA: tuple[str, ...] = ("helpfulness", "accuracy", "clarity", "safety", "completeness")
