"""The five services and the fake model as separate processes, on the session's real servers,
started with the same commands compose.yaml and `evalbus up` use."""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from evalbus.stack import Stack
from infra.embedded import free_port


@pytest.fixture(scope="module")
def failing_endpoint() -> str:
    """The URL of a configured endpoint (`failing`) where a test may start a faulty model."""
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.fixture(scope="module")
def stack(servers, failing_endpoint: str) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    st = Stack(servers.data_dir / "e2e", nats_url=servers.nats_url, database_url=servers.database_url)
    st.start_fake_model({"latency_ms": "5", "jitter_ms": "5"})
    endpoints = json.dumps({"failing": {"url": failing_endpoint}})
    # Breaker tests need not wait 30 s.
    st.start_services(extra_env={"EVALBUS_BREAKER_RESET_S": "0.5", "EVALBUS_ENDPOINTS": endpoints})
    st.wait_healthy()
    try:
        yield st
    finally:
        st.stop()
        dead = [p for p in (st.data_dir / "logs").glob("*.log") if "Traceback" in p.read_text()]
        if dead:  # a service that crashed is a failure even if the batch finished
            print("\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in dead))


Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(stack: Stack) -> Cli:
    """Runs the installed `evalbus` command against the stack, as a user would."""

    def run(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, EVALBUS_NATS_URL=stack.nats_url, EVALBUS_DATABASE_URL=stack.database_url, **(env or {}))
        return subprocess.run(
            [str(Path(sys.executable).parent / "evalbus"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run
