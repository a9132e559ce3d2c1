"""The safety presets and how explicit settings override them."""

import pytest
from pydantic import ValidationError

from contracts.inputs import BatchConfig
from contracts.presets import PRESETS, Limits, merged

SAFETY = set(Limits.model_fields)
# The settings the default preset leaves to what already governs them (BatchConfig's None).
FOLLOWED = {
    "judge_concurrency",
    "judge_timeout_s",
    "sql_timeout_s",
    "sql_concurrency",
    "breaker_fail_max",
    "breaker_reset_s",
}


def test_every_preset_setting_is_a_batch_config_field() -> None:
    assert set(BatchConfig.model_fields) >= SAFETY
    assert {
        "concurrency",
        "judge_concurrency",
        "max_retries",
        "retry_base_s",
        "timeout_s",
        "judge_timeout_s",
        "sql_timeout_s",
        "sql_concurrency",
        "breaker_fail_max",
        "breaker_reset_s",
        "judge_batch_size",
    } == SAFETY


@pytest.mark.parametrize("name", ["conservative", "aggressive"])
def test_conservative_and_aggressive_spell_out_every_setting(name: str) -> None:
    assert all(value is not None for value in PRESETS[name].model_dump().values())
    BatchConfig(model="m", **merged(name))  # within every bound


def test_default_leaves_to_the_services_what_they_govern_and_changes_no_config() -> None:
    default = PRESETS["default"].model_dump()
    assert {k for k, v in default.items() if v is None} == FOLLOWED
    config = BatchConfig(model="m", **merged("default"))
    # What `evalbus run` sent before these settings existed: only retry_base_s leaves its default.
    assert config.model_dump(exclude=config.defaulted_fields()) == {"model": "m", "retry_base_s": 5.0}


def test_presets_order_from_careful_to_fast() -> None:
    careful, fast = PRESETS["conservative"], PRESETS["aggressive"]
    default = PRESETS["default"]
    assert careful.concurrency < default.concurrency < fast.concurrency
    assert careful.timeout_s > default.timeout_s > fast.timeout_s
    assert careful.retry_base_s > default.retry_base_s > fast.retry_base_s
    assert careful.breaker_fail_max is not None and fast.breaker_fail_max is not None
    assert careful.breaker_fail_max < 5 < fast.breaker_fail_max  # 5: the services' own threshold
    assert careful.judge_batch_size < default.judge_batch_size < fast.judge_batch_size


def test_explicit_settings_override_the_preset_and_none_keeps_it() -> None:
    out = merged("conservative", concurrency=7, judge_timeout_s=9.5, breaker_reset_s=None, sql_concurrency=2)
    assert out["concurrency"] == 7 and out["judge_timeout_s"] == 9.5 and out["sql_concurrency"] == 2
    assert out["breaker_reset_s"] == PRESETS["conservative"].breaker_reset_s
    out = merged("default", breaker_fail_max=2, sql_timeout_s=0.5)
    assert (out["breaker_fail_max"], out["sql_timeout_s"]) == (2, 0.5)
    assert "judge_concurrency" not in out  # still None: left out, so the judge follows `concurrency`


def test_unknown_preset_or_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        merged("reckless")
    with pytest.raises(ValueError, match="not a preset setting: model"):
        merged("default", model=1)


def test_judge_settings_follow_the_models_unless_set() -> None:
    cfg = BatchConfig(model="m", concurrency=5, timeout_s=30)
    assert (cfg.effective_judge_concurrency, cfg.effective_judge_timeout_s) == (5, 30)
    cfg = BatchConfig(model="m", concurrency=5, timeout_s=30, judge_concurrency=2, judge_timeout_s=90)
    assert (cfg.effective_judge_concurrency, cfg.effective_judge_timeout_s) == (2, 90)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("judge_concurrency", 0),
        ("judge_concurrency", 1025),
        ("judge_timeout_s", 0),
        ("judge_timeout_s", 3601),
        ("sql_timeout_s", 0),
        ("sql_timeout_s", 301),  # a check's own timeout has the same bound
        ("sql_concurrency", 0),
        ("sql_concurrency", 257),
        ("breaker_fail_max", 0),
        ("breaker_reset_s", 0),
        ("breaker_reset_s", 3601),
        ("retry_base_s", -1),
    ],
)
def test_safety_settings_are_bounded(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        BatchConfig(model="m", **{field: value})  # type: ignore[arg-type]


def test_new_settings_travel_only_when_set() -> None:
    cfg = BatchConfig(model="m", judge_timeout_s=10, sql_concurrency=2)
    wire = cfg.model_dump(exclude=cfg.defaulted_fields())
    assert wire == {"model": "m", "judge_timeout_s": 10, "sql_concurrency": 2}
    assert BatchConfig.model_validate(wire) == cfg
