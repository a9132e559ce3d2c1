"""Proxies from the environment are read once per endpoint, as httpx's trust_env did per request."""

import pytest

from services.runtime.models.http_pool import env_proxy

PROXY_VARS = (
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)


def test_no_proxy_configured() -> None:
    assert env_proxy("https://api.example.com/v1") is None


def test_scheme_proxy_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.svc")
    assert env_proxy("https://api.example.com/v1") == "http://proxy.internal:3128"
    assert env_proxy("http://api.example.com/v1") is None  # no proxy named for http
    assert env_proxy("https://127.0.0.1:8089/v1") is None
    assert env_proxy("https://model.svc/v1") is None


def test_all_proxy_applies_to_every_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://proxy.internal:3128")
    assert env_proxy("http://model.test/v1") == "http://proxy.internal:3128"
