"""Which endpoint a batch's calls go to, with which key; what the contract refuses outright."""

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from contracts.inputs import BatchConfig, Case, StartBatchRequested, SuiteRef
from services.generator.logic import plan_batch
from services.runtime.models.endpoints import Endpoint, EndpointRejected, Endpoints, check_batch_endpoints, normalised
from services.runtime.settings import EndpointSetting, Settings

OPENAI = "https://api.openai.com/v1"
LOCAL = "http://127.0.0.1:8089/v1"


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def key_of(ep: Endpoint) -> str | None:
    return ep.api_key.get_secret_value() if ep.api_key else None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "gopher://example.com/",
        "unix:///var/run/docker.sock",
        "ftp://example.com/v1",
        "http:/example.com/v1",
        "http:example.com",
        "//example.com/v1",
        "http://",
        "http://exa mple.com/v1",
        " http://example.com/v1",
        "http://example.com/v1\n",
        "http://example.com/v1\x00",
        "http://user:pass@example.com/v1",
        "http://example.com@evil.test/v1",
        "http://evil.test\\@example.com/v1",
        "http://%65vil.test/v1",
        "http://example.com:0/v1",
        "http://example.com:99999/v1",
        "http://example.com:port/v1",
        "http://[::1/v1",
        "http://example.com/v1?x=1",
        "http://example.com/v1#frag",
        "http://example.com/v1/../admin",
        "http://exämple.com/v1",
        "http://example.com/" + "a" * 500,
    ],
)
def test_the_contract_refuses_anything_but_a_plain_http_url(url: str) -> None:
    with pytest.raises(ValidationError):
        BatchConfig(model="m", base_url=url)
    with pytest.raises(ValidationError):
        BatchConfig(model="m", judge_base_url=url)


@pytest.mark.parametrize("url", [OPENAI, LOCAL, "http://[::1]:8089/v1/", "HTTPS://Example.COM", "http://h.test:80"])
def test_the_contract_takes_http_and_https_urls(url: str) -> None:
    assert BatchConfig(model="m", base_url=url).base_url == url


@pytest.mark.parametrize("name", ["", "a b", "../x", "x" * 65, "-lead", "n\x00"])
def test_endpoint_names_have_a_plain_shape(name: str) -> None:
    with pytest.raises(ValidationError):
        BatchConfig(model="m", endpoint=name)


def test_urls_are_compared_by_scheme_host_port_and_path() -> None:
    assert normalised("HTTP://LocalHost:80/v1/") == normalised("http://localhost/v1")
    assert normalised("https://h.test/v1") == normalised("https://h.test:443/v1")
    assert normalised("http://[0:0::1]:8089/v1") == normalised("http://[::1]:8089/v1")
    assert normalised("http://h.test/v1") != normalised("https://h.test/v1")
    assert normalised("http://h.test/v1") != normalised("http://h.test:8080/v1")
    assert normalised("http://h.test/v1") != normalised("http://h.test/v2")
    assert normalised("http://h.test/V1") != normalised("http://h.test/v1")


def test_the_old_settings_are_two_implicit_endpoints_with_the_api_key() -> None:
    eps = Endpoints.from_settings(settings(api_key=SecretStr("sk-1"), judge_base_url="http://judge.test/v1"))
    assert eps.names == ["default", "judge"]
    assert (eps.named("default").url, key_of(eps.named("default"))) == (LOCAL, "sk-1")
    assert (eps.named("judge").url, key_of(eps.named("judge"))) == ("http://judge.test/v1", "sk-1")
    cfg = BatchConfig(model="m")
    assert eps.for_model(cfg).name == "default" and eps.for_judge(cfg).name == "judge"
    # Without a judge URL the judge shares the default endpoint.
    shared = Endpoints.from_settings(settings(api_key=SecretStr("sk-1")))
    assert shared.for_judge(cfg).url == LOCAL and key_of(shared.for_judge(cfg)) == "sk-1"


def test_the_api_key_file_still_works(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-file\n")
    eps = Endpoints.from_settings(settings(api_key_file=tmp_path / "key"))
    assert key_of(eps.named("default")) == "sk-file"
    assert key_of(Endpoints.from_settings(settings(api_key_file=tmp_path / "missing")).named("default")) is None


def test_configured_endpoints_read_their_own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "openai").write_text("sk-openai\n")
    monkeypatch.setenv("EVALBUS_TEST_ANTHROPIC_KEY", "sk-env")
    eps = Endpoints.from_settings(
        settings(
            api_key=SecretStr("sk-global"),
            endpoints={
                "openai": EndpointSetting(url=OPENAI, api_key_file=tmp_path / "openai"),
                "other": EndpointSetting(url="https://other.test/v1", api_key_env="EVALBUS_TEST_ANTHROPIC_KEY"),
                "inline": EndpointSetting(url="https://inline.test/v1", api_key=SecretStr("sk-inline")),
                "open": EndpointSetting(url="http://vllm.internal:8000/v1"),
            },
        )
    )
    assert {n: key_of(eps.named(n)) for n in eps.names} == {
        "default": "sk-global",
        "judge": "sk-global",
        "inline": "sk-inline",
        "open": None,  # the global key belongs to default and judge only
        "openai": "sk-openai",
        "other": "sk-env",
    }
    assert "sk-" not in repr(eps.named("openai")) and "sk-" not in repr(settings(api_key=SecretStr("sk-x")))
    # The generator checks names and URLs without reading any key.
    assert (
        Endpoints.from_settings(
            settings(endpoints={"x": EndpointSetting(url=OPENAI, api_key_file=tmp_path / "gone")}), read_keys=False
        )
        .named("x")
        .api_key
        is None
    )


def test_a_key_that_cannot_be_read_stops_the_service(tmp_path: Path) -> None:
    for setting in (
        EndpointSetting(url=OPENAI, api_key_file=tmp_path / "gone"),
        EndpointSetting(url=OPENAI, api_key_env="EVALBUS_TEST_UNSET_VARIABLE"),
    ):
        with pytest.raises(RuntimeError, match="endpoint 'x'"):
            Endpoints.from_settings(settings(endpoints={"x": setting}))
    with pytest.raises(ValidationError):
        EndpointSetting(url=OPENAI, api_key=SecretStr("a"), api_key_env="B")
    with pytest.raises(ValidationError):
        EndpointSetting(url="file:///etc/passwd")


def test_the_endpoints_setting_is_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALBUS_ENDPOINTS", '{"openai": {"url": "https://api.openai.com/v1", "api_key": "sk-j"}}')
    monkeypatch.setenv("EVALBUS_ALLOW_UNLISTED_ENDPOINTS", "true")
    eps = Endpoints.from_settings(Settings())
    assert key_of(eps.named("openai")) == "sk-j" and eps.allow_unlisted


def test_a_batch_names_an_endpoint_or_one_of_their_urls() -> None:
    eps = Endpoints.from_settings(
        settings(api_key=SecretStr("sk-1"), endpoints={"openai": EndpointSetting(url=OPENAI, api_key=SecretStr("k"))})
    )
    by_name = eps.for_model(BatchConfig(model="m", endpoint="openai"))
    by_url = eps.for_model(BatchConfig(model="m", base_url="HTTPS://API.OPENAI.COM:443/v1/"))
    assert by_name == by_url and by_url.url == OPENAI and key_of(by_url) == "k"  # the configured URL is called
    both = eps.for_model(BatchConfig(model="m", endpoint="openai", base_url=OPENAI + "/"))
    assert both.name == "openai"
    assert eps.for_model(BatchConfig(model="m", base_url=LOCAL)).name == "default"
    with pytest.raises(EndpointRejected, match="no endpoint named 'nope'"):
        eps.for_model(BatchConfig(model="m", endpoint="nope"))
    with pytest.raises(EndpointRejected, match="not the URL of endpoint 'openai'"):
        eps.for_model(BatchConfig(model="m", endpoint="openai", base_url=LOCAL))


def test_the_judge_uses_its_own_then_the_models_then_its_default() -> None:
    eps = Endpoints.from_settings(
        settings(
            judge_base_url="http://judge.test/v1",
            endpoints={"openai": EndpointSetting(url=OPENAI), "grader": EndpointSetting(url="https://g.test/v1")},
        )
    )
    assert eps.for_judge(BatchConfig(model="m")).name == "judge"
    assert eps.for_judge(BatchConfig(model="m", endpoint="openai")).name == "openai"
    assert eps.for_judge(BatchConfig(model="m", base_url=OPENAI)).name == "openai"
    assert eps.for_judge(BatchConfig(model="m", endpoint="openai", judge_endpoint="grader")).name == "grader"
    assert eps.for_judge(BatchConfig(model="m", judge_base_url="https://g.test/v1/")).name == "grader"


@pytest.mark.parametrize(
    "url", ["http://collector.test/v1", "http://127.0.0.1:8090/v1", "https://127.0.0.1:8089/v1", LOCAL + "/x"]
)
def test_an_unlisted_url_is_refused_unless_the_operator_allows_it_then_it_has_no_key(url: str) -> None:
    closed = Endpoints.from_settings(settings(api_key=SecretStr("sk-1")))
    with pytest.raises(EndpointRejected, match="is not a configured endpoint") as info:
        closed.for_model(BatchConfig(model="m", base_url=url))
    assert "sk-1" not in str(info.value)
    assert str(info.value).replace(url, "<url>").count("http") == 0  # names, not the operator's URLs
    opened = Endpoints.from_settings(settings(api_key=SecretStr("sk-1"), allow_unlisted_endpoints=True))
    ep = opened.for_model(BatchConfig(model="m", base_url=url))
    assert (ep.url, ep.name, ep.api_key, ep.authorization()) == (url, None, None, None)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest",
        "http://[fe80::1]/v1",
        "http://[::ffff:169.254.169.254]/v1",
        "http://metadata.google.internal/v1",
    ],
)
def test_link_local_and_metadata_hosts_are_refused_even_when_open(url: str) -> None:
    opened = Endpoints.from_settings(settings(allow_unlisted_endpoints=True))
    with pytest.raises(EndpointRejected, match="link-local or metadata"):
        opened.for_model(BatchConfig(model="m", base_url=url))


def test_a_url_shared_by_endpoints_means_the_first_and_a_name_picks_another() -> None:
    eps = Endpoints.from_settings(
        settings(
            api_key=SecretStr("k-default"),
            model_base_url=OPENAI,
            endpoints={
                "team-a": EndpointSetting(url=OPENAI, api_key=SecretStr("ka")),
                "team-b": EndpointSetting(url=OPENAI + "/", api_key=SecretStr("kb")),
            },
        )
    )
    assert key_of(eps.for_model(BatchConfig(model="m", base_url=OPENAI))) == "ka"
    assert key_of(eps.for_model(BatchConfig(model="m", endpoint="team-b"))) == "kb"
    assert key_of(eps.for_model(BatchConfig(model="m"))) == "k-default"


def test_the_start_check_names_the_refused_endpoint() -> None:
    st = settings()
    assert check_batch_endpoints(BatchConfig(model="m"), st) is None
    assert check_batch_endpoints(BatchConfig(model="m", base_url=LOCAL + "/"), st) is None
    reason = check_batch_endpoints(BatchConfig(model="m", base_url="http://collector.test/v1"), st)
    assert reason is not None and reason.startswith("model endpoint: base URL http://collector.test/v1 is not a")
    judge = check_batch_endpoints(BatchConfig(model="m", judge_endpoint="nope"), st)
    assert judge is not None and judge.startswith("judge endpoint: no endpoint named 'nope'")
    assert check_batch_endpoints(BatchConfig(model="m", judge_endpoint="nope", judge_enabled=False), st) is None


def test_the_generator_rejects_a_start_naming_an_unlisted_url() -> None:
    start = StartBatchRequested(
        batch_id="b-url",
        config=BatchConfig(model="m", base_url="http://collector.test/v1"),
        suite=SuiteRef(cases=[Case(prompt="hi")]),
    )
    outcome = plan_batch(start)
    assert not hasattr(outcome, "accepted")
    assert "is not a configured endpoint" in outcome.reason  # type: ignore[union-attr]
