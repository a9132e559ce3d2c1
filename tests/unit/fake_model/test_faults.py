"""Fault draws: reproducible per (seed, body, attempt), proportional to the rates, never sticky."""

from collections import Counter

import pytest

from services.fake_model.faults import FaultOutcome, FaultPlanner, FaultRates, body_digest, choose, uniform


def digests(n: int, prefix: str = "body") -> list[bytes]:
    return [body_digest(f'{{"messages": [{{"role": "user", "content": "{prefix} {i}"}}]}}'.encode()) for i in range(n)]


def test_uniform_is_reproducible_and_in_range() -> None:
    d = body_digest(b"{}")
    assert uniform(0, d, 0) == uniform(0, d, 0)
    assert uniform(0, d, 0) != uniform(1, d, 0) != uniform(0, d, 1)
    values = [uniform(7, x, 0) for x in digests(2000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55


def test_choose_uses_cumulative_ranges_in_order() -> None:
    rates = FaultRates(error_500=0.1, rate_limit=0.2, hang=0.3, malformed=0.25)
    assert choose(0.05, rates, judge=True) is FaultOutcome.SERVER_ERROR
    assert choose(0.15, rates, judge=True) is FaultOutcome.RATE_LIMITED
    assert choose(0.45, rates, judge=True) is FaultOutcome.HANG
    assert choose(0.7, rates, judge=True) is FaultOutcome.MALFORMED
    assert choose(0.7, rates, judge=False) is FaultOutcome.OK  # malformed is for judge requests only
    assert choose(0.9, rates, judge=True) is FaultOutcome.OK


def test_zero_rates_never_fault() -> None:
    planner = FaultPlanner(FaultRates(), seed=3)
    assert {planner.decide(d, judge=j) for d in digests(1000) for j in (True, False)} == {FaultOutcome.OK}


@pytest.mark.parametrize(
    ("rates", "expected"),
    [
        (FaultRates(error_500=1), FaultOutcome.SERVER_ERROR),
        (FaultRates(rate_limit=1), FaultOutcome.RATE_LIMITED),
        (FaultRates(hang=1), FaultOutcome.HANG),
        (FaultRates(malformed=1), FaultOutcome.MALFORMED),
    ],
)
def test_rate_one_always_faults(rates: FaultRates, expected: FaultOutcome) -> None:
    planner = FaultPlanner(rates)
    assert {planner.decide(d, judge=True) for d in digests(500) for _ in range(3)} == {expected}


@pytest.mark.parametrize("field", ["error_500", "rate_limit", "hang", "malformed"])
def test_half_rate_lands_within_five_points(field: str) -> None:
    planner = FaultPlanner(FaultRates(**{field: 0.5}), seed=11)
    outcomes = Counter(planner.decide(d, judge=True) for d in digests(2000))
    assert abs(outcomes[FaultOutcome.OK] / 2000 - 0.5) <= 0.05


def test_mixed_rates_split_proportionally() -> None:
    planner = FaultPlanner(FaultRates(error_500=0.1, rate_limit=0.1, hang=0.05, malformed=0.2))
    chat = Counter(planner.decide(d, judge=False) for d in digests(4000, "chat"))
    assert abs(chat[FaultOutcome.SERVER_ERROR] / 4000 - 0.1) < 0.03
    assert abs(chat[FaultOutcome.RATE_LIMITED] / 4000 - 0.1) < 0.03
    assert abs(chat[FaultOutcome.HANG] / 4000 - 0.05) < 0.02
    assert chat[FaultOutcome.MALFORMED] == 0


def test_same_bodies_same_seed_reproduce_the_same_faults() -> None:
    rates = FaultRates(error_500=0.3, rate_limit=0.2)
    bodies = digests(300)
    runs = [[FaultPlanner(rates, seed=5).decide(d, judge=False) for d in bodies] for _ in range(2)]
    assert runs[0] == runs[1]
    other_seed = [FaultPlanner(rates, seed=6).decide(d, judge=False) for d in bodies]
    assert other_seed != runs[0]


def test_a_retried_body_draws_again_and_eventually_succeeds() -> None:
    planner = FaultPlanner(FaultRates(error_500=0.5), seed=1)
    attempts_needed = []
    for d in digests(300):
        attempts = [planner.decide(d, judge=False) for _ in range(20)]
        assert FaultOutcome.OK in attempts
        attempts_needed.append(attempts.index(FaultOutcome.OK) + 1)
    assert max(attempts_needed) > 1  # some first attempts failed and a later retry of the same body succeeded
    # The sequence of outcomes for one body is itself reproducible.
    d = digests(1)[0]
    first = FaultPlanner(FaultRates(error_500=0.5), seed=1)
    second = FaultPlanner(FaultRates(error_500=0.5), seed=1)
    assert [first.decide(d, judge=False) for _ in range(10)] == [second.decide(d, judge=False) for _ in range(10)]


def test_tracking_is_bounded() -> None:
    planner = FaultPlanner(FaultRates(error_500=0.5), max_tracked=100)
    for d in digests(1000):
        planner.decide(d, judge=False)
    assert len(planner._seen) == 100
