"""The cluster's config helpers and the replica count the provisioner picks from a server's INFO."""

import os
import subprocess
from pathlib import Path

import pytest

from contracts.topology import STREAMS
from infra import nats_config
from infra.embedded import nats_server_binary
from infra.nats_topology import cluster_size, replicas_for, stream_config


def test_a_server_outside_a_cluster_counts_one_and_gets_one_replica() -> None:
    info = {"server_name": "solo", "jetstream": True, "connect_urls": ["127.0.0.1:4222"]}
    assert cluster_size(info) == 1
    assert replicas_for(cluster_size(info)) == 1


def test_a_three_node_cluster_gets_three_replicas_and_a_partial_one_does_not() -> None:
    urls = ["10.0.0.1:4222", "10.0.0.2:4222", "10.0.0.3:4222"]
    assert cluster_size({"cluster": "evalbus", "connect_urls": urls}) == 3
    assert replicas_for(3) == 3 and replicas_for(5) == 3
    assert cluster_size({"cluster": "evalbus", "connect_urls": urls[:2]}) == 2
    assert replicas_for(2) == 1  # R3 cannot be placed on two servers
    assert cluster_size({"cluster": "evalbus"}) == 1  # no_advertise: nothing to count


def test_stream_config_carries_the_replicas() -> None:
    assert stream_config(STREAMS[0]).num_replicas == 1
    assert stream_config(STREAMS[0], 3).num_replicas == 3


def test_route_urls_take_only_url_safe_passwords() -> None:
    assert nats_config.route_url("a-b_c.d~9", "nats-2:6222") == "nats-route://route:a-b_c.d~9@nats-2:6222"
    for bad in ("p@ss", "a:b", "a/b", "a b", "x%41"):
        with pytest.raises(ValueError):
            nats_config.route_url(bad, "nats:6222")


def test_a_rendered_cluster_node_is_a_valid_config_holding_every_role(tmp_path: Path) -> None:
    conf = nats_config.render_cluster_node(
        tmp_path / "node",
        store_dir=tmp_path / "js",
        listen="127.0.0.1:14222",
        http="0",
        cluster_listen="127.0.0.1:16222",
    )
    text = conf.read_text()
    assert 'include "nats-server.conf"' in text and "listen: 127.0.0.1:16222" in text
    included = (conf.parent / "nats-server.conf").read_text()
    assert "listen: 127.0.0.1:14222" in included and f'store_dir: "{tmp_path / "js"}"' in included
    for role in nats_config.ROLES:
        assert f"user: {role}\n" in included
    env = {
        **os.environ,
        **nats_config.server_env(nats_config.test_passwords()),
        **nats_config.cluster_env("nats-1", "r-1", ["127.0.0.1:16222", "127.0.0.1:16223", "127.0.0.1:16224"]),
    }
    checked = subprocess.run([nats_server_binary(), "-t", "-c", str(conf)], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_cluster_env_quotes_the_name_and_password_and_lists_every_route() -> None:
    env = nats_config.cluster_env("nats-2", "123456", ["h1:6222", "h2:6222"])
    assert env[nats_config.SERVER_NAME_ENV] == '"nats-2"'
    assert env[nats_config.ROUTE_PASSWORD_ENV] == '"123456"'  # a number unquoted
    assert env[nats_config.ROUTES_ENV] == '["nats-route://route:123456@h1:6222", "nats-route://route:123456@h2:6222"]'
