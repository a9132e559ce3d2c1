"""The one table of service names, and the places that read it."""

import ast
from pathlib import Path

import pytest

from contracts import services
from infra.nats_config import ROLES
from infra.processes import SERVICES, service_role

ROOT = Path(__file__).resolve().parents[3]


def test_modules_and_names_map_one_to_one() -> None:
    assert len(set(services.MODULES)) == len(set(services.NAMES)) == len(services.SERVICES) == 5
    for module, name in services.SERVICES:
        assert services.name_of(module) == name
        assert services.module_of(name) == module
    assert services.name_of("chat_runner") == "chat-runner"
    with pytest.raises(KeyError):
        services.name_of("fake_model")


@pytest.mark.parametrize(("module", "name"), services.SERVICES)
def test_each_service_calls_itself_by_its_name(module: str, name: str) -> None:
    tree = ast.parse((ROOT / "services" / module / "app.py").read_text())
    declared = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "SERVICE" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert declared == [name]


def test_processes_and_nats_users_come_from_the_table() -> None:
    assert services.MODULES == SERVICES
    assert ROLES == ("provisioner", "generator", "chat-runner", "judge", "scorer", "recorder", "client", "operator")
    assert [service_role(m) for m in SERVICES] == list(services.NAMES)
    assert service_role("chat_runner-2") == "chat-runner-2"
    assert service_role("fake-model") == "fake-model"
