"""The whole pipeline on the deployment's locked-down nats-server: every service logs in as its
own user with only its own subjects, the provisioner creates the topology, the CLI is `client`."""

import asyncio
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from contracts.subjects import endpoint_token
from contracts.topology import KV_RATES
from evalbus.stack import Stack
from infra.embedded import free_port, nats_server_binary, wait_for_port
from infra.nats_config import render, server_env, test_passwords
from infra.nats_topology import apply_topology
from infra.processes import SERVICES, service_argv

pytestmark = pytest.mark.e2e
PASSWORDS = test_passwords()


@pytest.fixture(scope="module")
def stack(servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("locked")
    port = free_port()
    conf = render(
        data / "nats.conf", store_dir=data / "js", listen=f"127.0.0.1:{port}", http=f"127.0.0.1:{free_port()}"
    )
    server = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)],
        env={**os.environ, **server_env(PASSWORDS)},
        stdout=subprocess.DEVNULL,
        stderr=(data / "nats.log").open("wb"),
    )
    st = Stack(data, nats_url=f"nats://127.0.0.1:{port}", database_url=servers.database_url)
    st.client_credentials = ("client", PASSWORDS["client"])
    try:
        wait_for_port(port, 20, server)  # type: ignore[arg-type]
        asyncio.run(apply_topology(st.nats_url, user="provisioner", password=PASSWORDS["provisioner"]))
        st.start_fake_model({"latency_ms": "2"})
        # a shared rate budget too, so its KV bucket is used under the same permissions
        rates = json.dumps({st.model_base_url: {"rpm": 6000, "tpm": 10_000_000}})
        for service in SERVICES:
            role = service.replace("_", "-")
            login = {"EVALBUS_NATS_USER": role, "EVALBUS_NATS_PASSWORD": PASSWORDS[role], "EVALBUS_RATE_LIMITS": rates}
            st.spawn(service, service_argv(service), login)
        st.wait_healthy()
        yield st
    finally:
        st.stop()
        server.terminate()
        server.wait(10)


async def test_a_batch_runs_with_least_privilege_users(stack: Stack, cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    suite = tmp_path / "locked.jsonl"
    suite.write_text("".join(json.dumps({"prompt": f"Where is order VL-{i}?"}) + "\n" for i in range(20)))
    client = {"EVALBUS_NATS_USER": "client", "EVALBUS_NATS_PASSWORD": PASSWORDS["client"]}
    batch_id = "b-locked-" + secrets.token_hex(3)
    run = await asyncio.to_thread(
        cli,
        "run",
        str(suite),
        "--model",
        "evalbus-fake",
        "--batch-id",
        batch_id,
        "--json",
        "--wait-timeout",
        "120",
        env=client,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["completed"] == 20
    status = await asyncio.to_thread(cli, "status", batch_id, "--json", env=client)
    assert status.returncode == 0 and json.loads(status.stdout)["scored"] == 20
    anonymous = await asyncio.to_thread(cli, "status", batch_id, "--json")
    assert anonymous.returncode == 3 and "cannot connect to nats" in anonymous.stderr.lower()  # no login
    nc = await nats.connect(  # as a runner: the role that reads and sets the budget
        stack.nats_url, user="chat-runner", password=PASSWORDS["chat-runner"], inbox_prefix="_INBOX.chat-runner"
    )
    kv = await nc.jetstream().key_value(KV_RATES)
    bucket = await kv.get(f"rate.{endpoint_token(stack.model_base_url)}")  # the budget was shared in KV
    assert bucket.value and b'"req"' in bucket.value
    await nc.close()
    logs = "".join(p.read_text() for p in (stack.data_dir / "logs").glob("*.log"))
    assert "permissions violation" not in logs.lower()
