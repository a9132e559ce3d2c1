#!/bin/sh
# Starts nats-server on the config named by EVALBUS_NATS_CONFIG (default nats-server.conf), from
# this script's folder (compose mounts infra/nats at /etc/nats and runs `sh /etc/nats/start-node.sh`).
#
# A cluster node (nats-cluster.conf) must have a route password: with an empty one, nats-server
# lets any server that reaches the route port join as a route, past every user's permissions.
# compose.yaml passes the password quoted for nats-server, so "unset" arrives as ''.
set -eu
dir=$(dirname "$0")
config="${EVALBUS_NATS_CONFIG:-nats-server.conf}"
case "$config" in
  nats-server.conf) ;;
  nats-cluster.conf)
    case "${EVALBUS_NATS_ROUTE_PASSWORD:-}" in
      "" | "''" | '""')
        echo "start-node.sh: EVALBUS_NATS_ROUTE_PASSWORD is not set; a cluster node will not start without it" >&2
        exit 2
        ;;
    esac
    ;;
  *)
    echo "start-node.sh: EVALBUS_NATS_CONFIG must be nats-server.conf or nats-cluster.conf, not '$config'" >&2
    exit 2
    ;;
esac
exec nats-server -c "$dir/$config"
