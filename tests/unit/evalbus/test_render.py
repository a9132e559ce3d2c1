"""The one way a number is shown in the CLI's tables (reports, samples, history, quality)."""

from evalbus.render import fmt, pct


def test_a_missing_value_is_a_dash() -> None:
    assert fmt(None) == "—" and pct(None) == "—"


def test_numbers_take_their_format_and_unit() -> None:
    assert fmt(7.456) == "7.46"
    assert fmt(12.34, ".0f", " ms") == "12 ms"
    assert fmt(0.0, ".3f") == "0.000"  # zero is a value, not a missing one


def test_fractions_are_percentages_with_one_decimal() -> None:
    assert pct(0.5) == "50.0%"
    assert pct(0.12345) == "12.3%"
    assert pct(0.0) == "0.0%"
