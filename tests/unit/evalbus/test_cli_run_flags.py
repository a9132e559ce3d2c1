"""`evalbus run`'s safety flags: a preset, then each explicit flag in its place, in the batch config."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

import evalbus.cli.run as run_cmd
from contracts.inputs import BatchConfig, SuiteRef
from contracts.presets import PRESETS
from evalbus.cli import app
from evalbus.cli.common import EXIT_REJECTED


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[BatchConfig]:
    """The config each `evalbus run` would start its batch with (nothing is sent anywhere)."""
    configs: list[BatchConfig] = []

    async def fake_run(
        batch_id: str, config: BatchConfig, source: SuiteRef | Path, as_json: bool, timeout_s: float | None
    ) -> int:
        configs.append(config)
        return 0

    monkeypatch.setattr(run_cmd, "_run", fake_run)
    return configs


def invoke(*flags: str) -> int:
    result = CliRunner().invoke(app, ["run", "customer_support_mini", "--model", "m", *flags])
    return result.exit_code


def test_no_flags_is_the_default_preset_and_the_config_it_always_was(sent: list[BatchConfig]) -> None:
    assert invoke() == 0
    [cfg] = sent
    assert (cfg.concurrency, cfg.max_retries, cfg.retry_base_s, cfg.timeout_s, cfg.judge_batch_size) == (
        3,
        2,
        5.0,
        120,
        10,
    )
    assert cfg.judge_concurrency is cfg.judge_timeout_s is cfg.sql_timeout_s is cfg.sql_concurrency is None
    assert cfg.breaker_fail_max is cfg.breaker_reset_s is None  # the services' own


def test_a_preset_sets_every_safety_setting(sent: list[BatchConfig]) -> None:
    assert invoke("--preset", "conservative") == 0
    [cfg] = sent
    for name, value in PRESETS["conservative"].model_dump().items():
        assert getattr(cfg, name) == value, name


def test_each_flag_reaches_its_setting_and_overrides_the_preset(sent: list[BatchConfig]) -> None:
    flags = {
        "--concurrency": ("concurrency", "6"),
        "--judge-concurrency": ("judge_concurrency", "2"),
        "--timeout": ("timeout_s", "45"),
        "--judge-timeout": ("judge_timeout_s", "200"),
        "--retries": ("max_retries", "4"),
        "--retry-delay": ("retry_base_s", "0.5"),
        "--breaker-threshold": ("breaker_fail_max", "7"),
        "--breaker-reset": ("breaker_reset_s", "12.5"),
        "--sql-timeout": ("sql_timeout_s", "2.5"),
        "--sql-concurrency": ("sql_concurrency", "3"),
        "--judge-batch-size": ("judge_batch_size", "4"),
    }
    args = [part for flag, (_, value) in flags.items() for part in (flag, value)]
    assert invoke("--preset", "aggressive", *args) == 0
    [cfg] = sent
    for field, value in flags.values():
        assert getattr(cfg, field) == float(value), field


def test_one_flag_leaves_the_rest_of_the_preset(sent: list[BatchConfig]) -> None:
    assert invoke("--preset", "aggressive", "--judge-timeout", "300") == 0
    [cfg] = sent
    assert cfg.judge_timeout_s == 300
    assert cfg.timeout_s == PRESETS["aggressive"].timeout_s and cfg.concurrency == PRESETS["aggressive"].concurrency


@pytest.mark.parametrize(
    "flags",
    [("--judge-timeout", "0"), ("--sql-concurrency", "0"), ("--breaker-threshold", "0"), ("--sql-timeout", "301")],
)
def test_a_setting_out_of_bounds_is_refused_before_anything_is_sent(
    sent: list[BatchConfig], flags: tuple[str, str]
) -> None:
    assert invoke(*flags) == EXIT_REJECTED
    assert sent == []
