import pytest

from services.judge.grading import Spent, apportion


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (10, [1, 1, 1], [4, 3, 3]),
        (7, [0, 0], [4, 3]),
        (100, [1, 3], [25, 75]),
        (5, [10, 10, 1], [3, 2, 0]),
        (0, [3, 4], [0, 0]),
        (1, [1], [1]),
    ],
)
def test_apportion_splits_in_proportion_into_integers_that_sum_to_the_total(
    total: int, weights: list[int], expected: list[int]
) -> None:
    assert apportion(total, weights) == expected


def test_apportion_always_sums_to_the_total() -> None:
    for total in range(0, 400, 37):
        for weights in ([5, 7, 11, 13], [1] * 10, [1000, 1, 1], [0, 3, 0, 0]):
            parts = apportion(total, weights)
            assert sum(parts) == total and all(p >= 0 for p in parts)


def test_spent_adds_sequential_and_concurrent_calls() -> None:
    a = Spent(tokens_in=10, tokens_out=2, latency_ms=5, attempts=1, share=0.5, cost_usd=0.1)
    b = Spent(tokens_in=3, tokens_out=1, latency_ms=7, attempts=2, share=1, cost_usd=0.2)
    both = a.then(b)
    assert (both.tokens_in, both.tokens_out, both.latency_ms, both.attempts, both.share) == (13, 3, 12, 3, 1.5)
    assert both.cost_usd == pytest.approx(0.3)
    assert a.alongside(b).latency_ms == 7
