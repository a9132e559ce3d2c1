"""The services, by the two names each one has: its Python module (`services.chat_runner`) and
its service name (`chat-runner`), which is its NATS user, its dead-letter subject's and control
subject's token, its health name and its name in compose and in logs."""

from typing import NamedTuple


class ServiceName(NamedTuple):
    module: str  # services.<module>
    name: str


GENERATOR = "generator"
CHAT_RUNNER = "chat-runner"
JUDGE = "judge"
SCORER = "scorer"
RECORDER = "recorder"

# In pipeline order.
SERVICES: tuple[ServiceName, ...] = (
    ServiceName("generator", GENERATOR),
    ServiceName("chat_runner", CHAT_RUNNER),
    ServiceName("judge", JUDGE),
    ServiceName("scorer", SCORER),
    ServiceName("recorder", RECORDER),
)
MODULES: tuple[str, ...] = tuple(s.module for s in SERVICES)
NAMES: tuple[str, ...] = tuple(s.name for s in SERVICES)
_BY_MODULE = {s.module: s.name for s in SERVICES}
_BY_NAME = {s.name: s.module for s in SERVICES}


def name_of(module: str) -> str:
    """`chat_runner` -> `chat-runner`; KeyError for a module that is not a service."""
    return _BY_MODULE[module]


def module_of(name: str) -> str:
    """`chat-runner` -> `chat_runner`; KeyError for a name that is not a service's."""
    return _BY_NAME[name]
