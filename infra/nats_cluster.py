"""A three-node JetStream cluster of real nats-server processes on loopback (the cluster tests').

Each node runs infra/nats/nats-cluster.conf (the locked-down single-node config plus routes),
rendered for its own client, monitoring and route ports and its own store, so the cluster holds
the same users and permissions as a deployment. Nodes are started, killed (-9) and restarted one
by one on the same ports and store, as a node of a real cluster would be.
"""

import asyncio
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.errors import Error as NatsError

from infra import nats_config
from infra.embedded import NATS_GOMEMLIMIT, free_port, nats_server_binary, wait_for_port

CLUSTER_SIZE = 3


@dataclass
class NatsNode:
    name: str
    data_dir: Path
    port: int
    route_port: int
    monitor_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, env: dict[str, str]) -> None:
        conf = nats_config.render_cluster_node(
            self.data_dir,
            store_dir=self.data_dir / "js",
            listen=f"127.0.0.1:{self.port}",
            http=f"127.0.0.1:{self.monitor_port}",  # loopback only: /healthz has no authentication
            cluster_listen=f"127.0.0.1:{self.route_port}",
        )
        logf = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        cmd = [nats_server_binary(), "-c", str(conf)]
        self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        wait_for_port(self.port, 20, self.proc)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class NatsCluster:
    """Three nodes, `nats-1` .. `nats-3`, with a password per role (`passwords`) and for the routes."""

    data_dir: Path
    passwords: dict[str, str] = field(default_factory=nats_config.test_passwords, repr=False)
    route_password: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    nodes: list[NatsNode] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: the EVALBUS_NATS_URL of a clustered deployment."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsNode:
        return next(n for n in self.nodes if n.name == name)

    def _env(self, node: NatsNode) -> dict[str, str]:
        routes = [f"127.0.0.1:{n.route_port}" for n in self.nodes]
        return {
            **os.environ,
            "GOMEMLIMIT": os.environ.get("GOMEMLIMIT", NATS_GOMEMLIMIT),
            **nats_config.server_env(self.passwords),
            **nats_config.cluster_env(node.name, self.route_password, routes),
        }

    def start(self) -> "NatsCluster":
        self.data_dir = self.data_dir.resolve()
        ports: set[int] = set()
        while len(ports) < 3 * CLUSTER_SIZE:  # free_port() may hand the same port out twice
            ports.add(free_port())
        it = iter(sorted(ports))
        self.nodes = [
            NatsNode(f"nats-{i + 1}", self.data_dir / f"nats-{i + 1}", next(it), next(it), next(it))
            for i in range(CLUSTER_SIZE)
        ]
        try:
            for node in self.nodes:
                node.start(self._env(node))
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, name: str) -> None:
        node = self.node(name)
        node.start(self._env(node))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    async def wait_ready(self, timeout_s: float = 60) -> None:
        """Until JetStream answers through every node (a meta leader is elected and every node knows it)."""
        user, password = "provisioner", self.passwords["provisioner"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for node in self.nodes:
            while True:
                try:
                    nc = await nats.connect(
                        node.url, user=user, password=password, inbox_prefix="_INBOX.provisioner",
                        allow_reconnect=False, connect_timeout=2,
                    )  # fmt: skip
                    try:
                        await nc.jetstream(timeout=2).account_info()
                        break
                    finally:
                        await nc.close()
                except (NatsError, TimeoutError, OSError) as exc:
                    if loop.time() > deadline:
                        raise TimeoutError(f"JetStream not ready on {node.name} after {timeout_s:g}s") from exc
                    await asyncio.sleep(0.3)
