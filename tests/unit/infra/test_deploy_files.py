"""compose.yaml and the Dockerfile cannot be run here (no Docker engine), so this reads them and
checks that every command is one the project really has and every setting is a real one."""

import importlib
import os
import re
import subprocess
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
        assert interpolate(env["EVALBUS_NATS_URL"], {}) == "nats://nats:4222"
        assert (
            env["EVALBUS_DATABASE_URL"].startswith("postgresql+asyncpg://")
            and "@postgres:" in env["EVALBUS_DATABASE_URL"]
        )
    assert services["nats"]["entrypoint"] == ["sh", "/etc/nats/start-node.sh"]


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
    from infra.nats_config import ROLES, ROUTE_PASSWORD_ENV, ROUTES_ENV, SERVER_NAME_ENV, config_path, password_env

    services = compose()["services"]
    for node in NATS_NODES:
        mount = next(v for v in services[node]["volumes"] if v.endswith(":/etc/nats:ro"))
        assert (ROOT / mount.split(":")[0]).resolve() == config_path().parent
    cluster_vars = {"EVALBUS_NATS_CONFIG", SERVER_NAME_ENV, ROUTE_PASSWORD_ENV, ROUTES_ENV}
    assert (
        set(services["nats"]["environment"]) == {password_env(role) for role in ROLES} | {"GOMEMLIMIT"} | cluster_vars
    )
    assert interpolate(services["nats"]["environment"]["EVALBUS_NATS_CONFIG"], {}) == "nats-server.conf"
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


# --- health checks, start order and the three-node cluster profile ---

NATS_NODES = ("nats", "nats-2", "nats-3")
CLUSTER_URLS = "nats://nats:4222,nats://nats-2:4222,nats://nats-3:4222"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?message}` (the forms compose.yaml uses)."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Z0-9_]+)(?:(:-|:\?)([^}]*))?\}", one, value)


def node_env(node: str, env: dict[str, str]) -> dict[str, str]:
    return {k: interpolate(str(v), env) for k, v in compose()["services"][node]["environment"].items()}


def compose_env(route_password: str | None) -> dict[str, str]:
    """What an .env file holds: the seven passwords (awkward ones), and the cluster's settings."""
    from infra.nats_config import ROLES, password_env

    env = {password_env(role): f"{i}0G" if i % 2 else "123456" for i, role in enumerate(ROLES)}
    if route_password is not None:
        env |= {
            "COMPOSE_PROFILES": "cluster",
            "EVALBUS_NATS_CONFIG": "nats-cluster.conf",
            "EVALBUS_NATS_ROUTE_PASSWORD": route_password,
            "EVALBUS_COMPOSE_NATS_URL": CLUSTER_URLS,
        }
    return env


def test_nats_health_check_asks_the_monitoring_healthz() -> None:
    from infra.nats_config import config_path

    monitor = re.search(r"^http: (\d+)$", config_path().read_text(), re.M)
    assert monitor, "nats-server.conf must enable the monitoring port that /healthz is served on"
    for node in NATS_NODES:
        svc = compose()["services"][node]
        assert svc["image"].endswith("-alpine"), f"{node}: the scratch image has no wget for the health check"
        test = svc["healthcheck"]["test"]
        assert test[:2] == ["CMD", "wget"] and test[-1] == f"http://127.0.0.1:{monitor.group(1)}/healthz"
        assert f"{monitor.group(1)}:" not in " ".join(svc.get("ports", [])), "monitoring has no authentication"


def test_fake_model_health_check_asks_its_health_endpoint() -> None:
    from unittest import mock

    from services.fake_model import server
    from services.fake_model.settings import FakeModelSettings

    svc = compose()["services"]["fake-model"]
    port = svc["command"][svc["command"].index("--port") + 1]
    test = svc["healthcheck"]["test"]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/[a-z]+)", test[-1])
    assert test[:3] == ["CMD", "python", "-c"] and url and url.group(1) == port
    with mock.patch.object(server, "encoding"):  # the BPE ranks are not needed to list routes
        app = server.create_app(FakeModelSettings())
    assert ("GET", url.group(2)) in {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource}
    compile(test[-1], "healthcheck", "exec")


def test_postgres_health_check_is_pg_isready_on_the_evalbus_database() -> None:
    svc = compose()["services"]["postgres"]
    test = svc["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    assert test[test.index("-U") + 1] == svc["environment"]["POSTGRES_USER"]
    assert test[test.index("-d") + 1] == svc["environment"]["POSTGRES_DB"]


def test_migrate_runs_on_healthy_servers_and_services_after_it() -> None:
    services = compose()["services"]
    migrate_deps = services["migrate"]["depends_on"]
    assert migrate_deps["postgres"]["condition"] == "service_healthy"
    for svc in ("generator", "chat-runner", "judge", "scorer", "recorder"):
        deps = services[svc]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        for node in NATS_NODES:
            assert deps[node]["condition"] == "service_healthy"
    for deps in [migrate_deps] + [services[s]["depends_on"] for s in ("generator", "recorder")]:
        assert deps["nats"]["condition"] == "service_healthy"
        assert deps["nats"].get("required", True) is True
        for node in NATS_NODES[1:]:  # only in the cluster profile: not required without it
            assert deps[node] == {"condition": "service_healthy", "required": False}
    for svc in ("chat-runner", "judge"):
        assert services[svc]["depends_on"]["fake-model"]["condition"] == "service_healthy"
    for name, svc in services.items():
        if "healthcheck" in svc:
            assert svc["healthcheck"]["test"][0] == "CMD", name


def test_cluster_profile_runs_three_nodes_with_their_own_names_and_stores() -> None:
    services = compose()["services"]
    assert "profiles" not in services["nats"]  # node 1, and the single server without the profile
    for node in NATS_NODES[1:]:
        assert services[node]["profiles"] == ["cluster"]
    env = compose_env(route_password="route-secret_1")
    names = [node_env(node, env)["EVALBUS_NATS_SERVER_NAME"] for node in NATS_NODES]
    assert names == list(NATS_NODES)
    stores = [next(v.split(":")[0] for v in services[n]["volumes"] if v.endswith(":/data")) for n in NATS_NODES]
    assert len(set(stores)) == 3 and set(stores) <= set(compose()["volumes"])
    for node in NATS_NODES:
        routes = node_env(node, env)["EVALBUS_NATS_ROUTES"]
        assert re.findall(r"@([a-z0-9-]+):6222", routes) == list(NATS_NODES)
        assert node_env(node, env)["EVALBUS_NATS_CONFIG"] == "nats-cluster.conf"
    # ... and the services and the provisioner are given all three URLs
    for svc in ("migrate", "generator", "chat-runner", "judge", "scorer", "recorder"):
        assert interpolate(services[svc]["environment"]["EVALBUS_NATS_URL"], env) == CLUSTER_URLS


def _nats_check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from infra.embedded import nats_server_binary

    return subprocess.run(
        [nats_server_binary(), "-t", "-c", str(config)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_the_real_nats_server_accepts_each_nodes_config_with_composes_environment() -> None:
    from infra.nats_config import CLUSTER_CONFIG_PATH, config_path

    single = _nats_check(config_path(), node_env("nats", compose_env(route_password=None)))
    assert single.returncode == 0, single.stdout + single.stderr
    for node in NATS_NODES:
        checked = _nats_check(CLUSTER_CONFIG_PATH, node_env(node, compose_env(route_password="r-" + node)))
        assert checked.returncode == 0, f"{node}: {checked.stdout}{checked.stderr}"


def _start_node(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """infra/nats/start-node.sh with a stand-in nats-server on PATH that prints its arguments."""
    from infra.nats_config import config_path

    fake = tmp_path / "nats-server"
    fake.write_text('#!/bin/sh\necho "nats-server $*"\n')
    fake.chmod(0o755)
    script = config_path().parent / "start-node.sh"
    run_env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", **env}
    return subprocess.run(["sh", str(script)], env=run_env, capture_output=True, text=True, timeout=10)


def test_start_node_refuses_a_cluster_node_without_a_route_password(tmp_path: Path) -> None:
    from infra.nats_config import CLUSTER_CONFIG_PATH, config_path

    single = _start_node(tmp_path, node_env("nats", compose_env(route_password=None)))
    assert single.returncode == 0 and single.stdout.strip() == f"nats-server -c {config_path()}"
    clustered = _start_node(tmp_path, node_env("nats-2", compose_env(route_password="s3cret")))
    assert clustered.returncode == 0 and clustered.stdout.strip() == f"nats-server -c {CLUSTER_CONFIG_PATH}"
    unset = compose_env(route_password="s3cret")
    del unset["EVALBUS_NATS_ROUTE_PASSWORD"]
    for node in NATS_NODES:  # compose passes '' for an unset password: no node of the cluster starts
        refused = _start_node(tmp_path, node_env(node, unset))
        assert refused.returncode == 2 and "EVALBUS_NATS_ROUTE_PASSWORD" in refused.stderr, node
    other = _start_node(tmp_path, {"EVALBUS_NATS_CONFIG": "../elsewhere.conf"})
    assert other.returncode == 2
