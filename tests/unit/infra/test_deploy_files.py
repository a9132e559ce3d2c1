"""compose.yaml and the Dockerfile cannot be run here (no Docker engine), so this reads them and
checks that every command is one the project really has and every setting is a real one."""

import importlib
import re
import tomllib
from pathlib import Path

import yaml

from infra.processes import SERVICES, service_argv
from services.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[3]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def fake_model_fields() -> set[str]:
    from services.fake_model.settings import FakeModelSettings

    return {f"EVALBUS_FAKE_MODEL_{name.upper()}" for name in FakeModelSettings.model_fields}


def test_every_service_runs_the_same_command_as_the_tests() -> None:
    services = compose()["services"]
    by_command = {tuple(svc["command"]): name for name, svc in services.items() if "command" in svc and "build" in svc}
    for service in SERVICES:
        assert tuple(service_argv(service)) in by_command, f"{service} is not deployed with {service_argv(service)}"
        module, attr = service_argv(service)[-1].split(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_every_built_command_exists() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name, svc in compose()["services"].items():
        if "build" not in svc:
            continue
        cmd = svc["command"]
        if cmd[0] == "faststream":
            assert cmd[1:3] == ["run", "--factory"], name
        elif cmd[0] == "python":
            assert cmd[1] == "-m", name
            importlib.import_module(cmd[2] + ".__main__")
        else:
            assert cmd[0] in scripts, f"{name}: {cmd[0]} is not a console script"
            from evalbus.cli import app

            assert cmd[1] in {c.name or c.callback.__name__ for c in app.registered_commands}, name  # type: ignore[union-attr]


def test_every_environment_variable_is_a_real_setting() -> None:
    known = {f"EVALBUS_{name.upper()}" for name in Settings.model_fields} | fake_model_fields()
    for name, svc in compose()["services"].items():
        if "build" not in svc:
            continue
        for key in svc.get("environment", {}):
            assert key in known, f"{name} sets {key}, which no setting reads"


def test_services_wait_for_migrations_and_reach_the_servers() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["evalbus", "migrate"]
    for svc in ("generator", "chat-runner", "judge", "scorer", "recorder"):
        assert services[svc]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = services[svc]["environment"]
        assert env["EVALBUS_NATS_URL"].startswith("nats://nats:")
        assert (
            env["EVALBUS_DATABASE_URL"].startswith("postgresql+asyncpg://")
            and "@postgres:" in env["EVALBUS_DATABASE_URL"]
        )
    assert services["nats"]["command"] == ["-c", "/etc/nats/nats-server.conf"]


def test_dockerfile_installs_every_package_the_commands_import() -> None:
    text = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in packages:
        name = pkg.rstrip("*")
        assert re.search(rf"^COPY {name} \./{name}$", text, re.M), f"Dockerfile does not copy {name}/"
    assert re.search(r"^RUN pip install \.", text, re.M)
    cmd = re.search(r"^CMD \[(.*)\]$", text, re.M)
    assert cmd and [p.strip().strip('"') for p in cmd.group(1).split(",")] == service_argv("recorder")


def test_every_service_has_a_liveness_probe_the_cli_answers() -> None:
    services = compose()["services"]
    for module in SERVICES:
        name = module.replace("_", "-")
        assert services[name]["healthcheck"]["test"] == ["CMD", "evalbus", "alive", name]


def test_nats_runs_the_locked_down_config_and_each_service_logs_in_as_itself() -> None:
    from infra.nats_config import ROLES, config_path, password_env

    services = compose()["services"]
    mount = next(v for v in services["nats"]["volumes"] if v.endswith(":/etc/nats/nats-server.conf:ro"))
    assert (ROOT / mount.split(":")[0]).resolve() == config_path()
    assert set(services["nats"]["environment"]) == {password_env(role) for role in ROLES} | {"GOMEMLIMIT"}
    for role in ROLES:  # quoted in the value: NATS would read 123456 as a number, 10G as a size
        assert services["nats"]["environment"][password_env(role)] == f"'${{{password_env(role)}:?set it}}'"
    assert services["migrate"]["environment"]["EVALBUS_NATS_USER"] == "provisioner"
    for module in SERVICES:
        role = module.replace("_", "-")
        env = services[role]["environment"]
        assert env["EVALBUS_NATS_USER"] == role
        assert env["EVALBUS_NATS_PASSWORD"] == f"${{{password_env(role)}:?set it}}"


def test_compose_nats_has_the_embedded_servers_heap_limit() -> None:
    from infra.embedded import NATS_GOMEMLIMIT

    assert compose()["services"]["nats"]["environment"]["GOMEMLIMIT"] == NATS_GOMEMLIMIT
