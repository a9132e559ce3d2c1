"""Which fault, if any, a request gets. Pure: the outcome depends only on the seed, the request body
and how many times this process has already seen that body, so runs are reproducible while a
retry of the same request draws again and can succeed."""

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum


class FaultOutcome(StrEnum):
    """What the fake model does with one request: answer it, or fail it in one of four ways."""

    OK = "ok"
    SERVER_ERROR = "500"
    RATE_LIMITED = "429"
    HANG = "hang"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class FaultRates:
    error_500: float = 0.0
    rate_limit: float = 0.0
    hang: float = 0.0
    malformed: float = 0.0


_TWO_64 = float(1 << 64)


def body_digest(canonical_body: bytes) -> bytes:
    """A 16-byte digest of the canonical request body; its hex prefix is the request hash."""
    return hashlib.blake2b(canonical_body, digest_size=16).digest()


def uniform(seed: int, digest: bytes, attempt: int) -> float:
    """A uniform number in [0, 1) for the attempt-th sighting of a body."""
    key = seed.to_bytes(16, "big", signed=True) + attempt.to_bytes(8, "big") + digest
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / _TWO_64


def choose(u: float, rates: FaultRates, *, judge: bool) -> FaultOutcome:
    """Cumulative ranges in a fixed order: 500, then 429, then hang, then malformed (judge only)."""
    edge = rates.error_500
    if u < edge:
        return FaultOutcome.SERVER_ERROR
    edge += rates.rate_limit
    if u < edge:
        return FaultOutcome.RATE_LIMITED
    edge += rates.hang
    if u < edge:
        return FaultOutcome.HANG
    edge += rates.malformed
    if judge and u < edge:
        return FaultOutcome.MALFORMED
    return FaultOutcome.OK


@dataclass
class FaultPlanner:
    """Counts sightings per body so the n-th retry of a request gets its own draw."""

    rates: FaultRates
    seed: int = 0
    # Bounded so a long benchmark cannot grow memory without limit; forgetting a very old body
    # only restarts its attempt count.
    max_tracked: int = 1_000_000
    _seen: dict[bytes, int] = field(default_factory=dict, repr=False)

    def decide(self, digest: bytes, *, judge: bool) -> FaultOutcome:
        if not (self.rates.error_500 or self.rates.rate_limit or self.rates.hang or self.rates.malformed):
            return FaultOutcome.OK  # nothing to draw, so nothing to count (and no memory spent on it)
        attempt = self._seen.get(digest, 0)
        if attempt == 0 and len(self._seen) >= self.max_tracked:
            del self._seen[next(iter(self._seen))]
        self._seen[digest] = attempt + 1
        return choose(uniform(self.seed, digest, attempt), self.rates, judge=judge)
