"""The commands that start each process. compose.yaml, the Dockerfile, `evalbus up` and the tests
all start these same commands (a test checks compose.yaml against this list)."""

import sys

SERVICES: tuple[str, ...] = ("generator", "chat_runner", "judge", "scorer", "recorder")


def service_app(service: str) -> str:
    return f"services.{service}.app:create_app"


def service_role(service: str) -> str:
    """`chat_runner` -> `chat-runner`: its NATS user, health name and log name in compose."""
    return service.replace("_", "-")


def service_argv(service: str) -> list[str]:
    """`faststream run --factory services.<service>.app:create_app`, the container command too."""
    return ["faststream", "run", "--factory", service_app(service)]


def fake_model_argv(port: int) -> list[str]:
    return ["python", "-m", "services.fake_model", "--host", "127.0.0.1", "--port", str(port)]


def local(argv: list[str]) -> list[str]:
    """The same command with this interpreter, so it runs from this virtualenv."""
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return [sys.executable, "-m", *argv]
