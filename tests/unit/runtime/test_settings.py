"""Renamed settings: the new environment names are read, the old ones still are for one release,
with a logged deprecation warning."""

import logging

import pytest

from services.runtime.settings import DEPRECATED_ENV, Settings

RENAMED = ["EVALBUS_CONSUMER_BATCH_SIZE", "EVALBUS_CONSUMER_BATCH_WAIT_S", *DEPRECATED_ENV]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in RENAMED:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def deprecations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "evalbus.settings" and r.levelno == logging.WARNING]


def test_defaults_without_any_name(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings()
    assert (s.consumer_batch_size, s.consumer_batch_wait_s) == (256, 0.05)
    assert deprecations(caplog) == []


def test_new_names_are_read_without_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EVALBUS_CONSUMER_BATCH_SIZE", "32")
    monkeypatch.setenv("evalbus_consumer_batch_wait_s", "0.5")  # settings are case-insensitive
    s = Settings()
    assert (s.consumer_batch_size, s.consumer_batch_wait_s) == (32, 0.5)
    assert deprecations(caplog) == []


def test_old_names_are_read_and_warned_of(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EVALBUS_FETCH_BATCH", "16")
    monkeypatch.setenv("EVALBUS_FETCH_TIMEOUT_S", "0.25")
    with caplog.at_level(logging.WARNING, logger="evalbus.settings"):
        s = Settings()
    assert (s.consumer_batch_size, s.consumer_batch_wait_s) == (16, 0.25)
    warned = deprecations(caplog)
    assert len(warned) == 2
    assert "EVALBUS_FETCH_BATCH is deprecated" in warned[0] and "EVALBUS_CONSUMER_BATCH_SIZE" in warned[0]
    assert "EVALBUS_FETCH_TIMEOUT_S is deprecated" in warned[1] and "EVALBUS_CONSUMER_BATCH_WAIT_S" in warned[1]


def test_the_new_name_wins_over_the_old(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EVALBUS_FETCH_BATCH", "16")
    monkeypatch.setenv("EVALBUS_CONSUMER_BATCH_SIZE", "64")
    with caplog.at_level(logging.WARNING, logger="evalbus.settings"):
        assert Settings().consumer_batch_size == 64
    [warned] = deprecations(caplog)
    assert "EVALBUS_CONSUMER_BATCH_SIZE is set too and wins" in warned


def test_old_values_are_validated_like_new_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALBUS_FETCH_BATCH", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        Settings()


def test_fields_are_set_by_name_in_code() -> None:
    s = Settings(consumer_batch_size=8, consumer_batch_wait_s=1.5)
    assert (s.consumer_batch_size, s.consumer_batch_wait_s) == (8, 1.5)


def test_both_names_are_documented() -> None:
    for old, new in DEPRECATED_ENV.items():
        field = Settings.model_fields[new.removeprefix("EVALBUS_").lower()]
        assert field.description is not None and old in field.description
