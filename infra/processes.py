"""The commands that start each process. compose.yaml, the Dockerfile, `evalbus up` and the tests
all start these same commands (a test checks compose.yaml against this list)."""

import sys

from contracts.services import MODULES, name_of

SERVICES: tuple[str, ...] = MODULES  # by module name: `chat_runner`


def service_app(service: str) -> str:
    return f"services.{service}.app:create_app"


def service_role(process: str) -> str:
    """A process's service name (contracts.services): `chat_runner` -> `chat-runner`, its NATS user,
    health name and log name in compose; a replica `chat_runner-2` -> `chat-runner-2`. Other
    processes (`fake-model`) keep their names, with '_' made '-'."""
    module, sep, replica = process.partition("-")
    if module in MODULES:
        return name_of(module) + sep + replica
    return process.replace("_", "-")


def service_argv(service: str) -> list[str]:
    """`faststream run --factory services.<service>.app:create_app`, the container command too."""
    return ["faststream", "run", "--factory", service_app(service)]


def metrics_port(base: int, service: str, replica: int = 0) -> int:
    """The metrics port of a process on a host that runs them all (`evalbus up`): the services in
    order from `base`, then each further replica's row after them (chat_runner-2 is base + 6), so
    a replica added later never moves another's port."""
    return base + replica * len(SERVICES) + SERVICES.index(service)


def fake_model_argv(port: int) -> list[str]:
    return ["python", "-m", "services.fake_model", "--host", "127.0.0.1", "--port", str(port)]


def local(argv: list[str]) -> list[str]:
    """The same command with this interpreter, so it runs from this virtualenv."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return [sys.executable, "-m", *argv]
