"""Where Prometheus finds each service's /metrics: compose.yaml and its scrape config, and the
ports `evalbus up` gives the processes of one host."""

from pathlib import Path

import yaml

from infra.processes import SERVICES, metrics_port, service_role

ROOT = Path(__file__).resolve().parents[3]


def test_every_service_serves_metrics_on_the_port_compose_exposes_and_prometheus_scrapes() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    scrape = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    (dns,) = job["dns_sd_configs"]
    for module in SERVICES:
        svc = compose["services"][service_role(module)]
        port = svc["environment"]["EVALBUS_METRICS_PORT"]
        assert svc["environment"]["EVALBUS_METRICS_HOST"] == "0.0.0.0"  # reachable from the compose network
        assert port in svc["expose"] and int(port) == dns["port"]
        assert service_role(module) in dns["names"]
    prometheus = compose["services"]["prometheus"]
    assert prometheus["profiles"] == ["metrics"]
    assert "./infra/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]


def test_processes_on_one_host_get_ports_that_never_collide_or_move() -> None:
    ports = {(s, r): metrics_port(9100, s, r) for s in SERVICES for r in range(4)}
    assert len(set(ports.values())) == len(ports)
    assert sorted(metrics_port(9100, s) for s in SERVICES) == list(range(9100, 9100 + len(SERVICES)))
    assert metrics_port(9100, "chat_runner", 1) == 9100 + len(SERVICES) + SERVICES.index("chat_runner")
