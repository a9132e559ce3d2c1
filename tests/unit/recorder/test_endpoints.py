"""Which endpoints a batch's breakers are looked up by (services/recorder/endpoints.py)."""

from contracts.inputs import BatchConfig
from services.recorder.endpoints import batch_endpoint_keys, endpoint_key
from services.runtime.models.endpoints import Endpoint, Endpoints

ENDPOINTS = Endpoints(
    [
        Endpoint(url="http://127.0.0.1:8089/v1", name="default"),
        Endpoint(url="http://127.0.0.1:8089/v1", name="judge"),
        Endpoint(url="http://127.0.0.1:9001/v1", name="failing"),
        Endpoint(url="https://judge.example/v1", name="grader"),
    ]
)


def test_one_key_for_every_spelling_of_a_url() -> None:
    assert (
        endpoint_key("HTTP://127.0.0.1:9001/v1/")
        == endpoint_key("http://127.0.0.1:9001/v1")
        == "http://127.0.0.1:9001/v1"
    )
    assert endpoint_key("https://Judge.Example/v1") == "https://judge.example:443/v1"
    assert endpoint_key("http://[::1]:80/v1") == endpoint_key("http://[0:0:0:0:0:0:0:1]/v1")
    assert endpoint_key("http://127.0.0.1:9001/v1") != endpoint_key("https://127.0.0.1:9001/v1")


def test_a_batch_naming_nothing_uses_the_default_and_judge_endpoints() -> None:
    assert batch_endpoint_keys(BatchConfig(model="m"), ENDPOINTS) == ["http://127.0.0.1:8089/v1"]


def test_the_judge_follows_the_model_endpoint_unless_it_has_its_own() -> None:
    failing = BatchConfig(model="m", endpoint="failing")
    assert batch_endpoint_keys(failing, ENDPOINTS) == ["http://127.0.0.1:9001/v1"]
    own_judge = BatchConfig(model="m", endpoint="failing", judge_endpoint="grader")
    assert batch_endpoint_keys(own_judge, ENDPOINTS) == ["http://127.0.0.1:9001/v1", "https://judge.example:443/v1"]
    no_judge = BatchConfig(model="m", endpoint="failing", judge_endpoint="grader", judge_enabled=False)
    assert batch_endpoint_keys(no_judge, ENDPOINTS) == ["http://127.0.0.1:9001/v1"]


def test_a_url_of_a_configured_endpoint_is_that_endpoint() -> None:
    by_url = BatchConfig(model="m", base_url="http://127.0.0.1:9001/v1/")
    assert batch_endpoint_keys(by_url, ENDPOINTS) == ["http://127.0.0.1:9001/v1"]


def test_an_endpoint_unknown_here_is_kept_by_its_url_and_a_name_unknown_here_is_left_out() -> None:
    unlisted = BatchConfig(model="m", base_url="http://10.0.0.7:8000/v1")
    assert batch_endpoint_keys(unlisted, ENDPOINTS) == ["http://10.0.0.7:8000/v1"]
    unknown_judge = BatchConfig(model="m", judge_endpoint="elsewhere")
    assert batch_endpoint_keys(unknown_judge, ENDPOINTS) == ["http://127.0.0.1:8089/v1"]
