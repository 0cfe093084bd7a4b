"""Config: YAML + pydantic validation, --set overrides, one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import ConfigError, dump_config, flatten, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate_and_their_dump_loads_back_the_same(name, tmp_path):
    config = load_config(CONFIGS / name)
    dumped = tmp_path / name
    dumped.write_text(dump_config(config))  # what every run saves next to its outputs
    assert load_config(dumped) == config


@pytest.mark.parametrize(
    ("override", "allowed"),
    [("data.kind=ct", ["xray", "mri"]), ("model.global_pool=median", ["token", "avg", "max"]),
     ("train.amp=fp8", ["auto", "bf16", "fp16", "off"]), ("evaluate.threshold=f1", ["youden", "sensitivity"])],
)
def test_a_value_outside_the_choices_is_one_line_naming_the_key_and_the_choices(override, allowed):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "demo_xray.yaml", [override])
    message = str(err.value)
    assert "\n" not in message and f"'{key}'" in message and f"'{value}'" in message
    assert all(f"'{choice}'" in message for choice in allowed), message


def test_set_overrides_nested_keys_with_yaml_types():
    config = load_config(CONFIGS / "demo_xray.yaml", ["preprocess.xray.img_size=96", "split.seed=7",
                                                        "data.selection.modalities=[DX]", "augment.enabled=false"])
    assert config.preprocess.xray.img_size == 96 and config.split.seed == 7
    assert config.data.selection.modalities == ["DX"] and config.augment.enabled is False


def test_unknown_key_is_one_line_naming_it():
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "demo_xray.yaml", ["preprocess.xray.img_sise=96"])
    message = str(err.value)
    assert "preprocess.xray.img_sise" in message and "unknown" in message and "\n" not in message


def test_wrong_type_and_missing_key_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="split.seed"):
        load_config(CONFIGS / "demo_xray.yaml", ["split.seed=abc"])
    (tmp_path / "c.yaml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="missing config key 'data'"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(CONFIGS / "demo_xray.yaml", ["split.seed"])


def test_split_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match="training"):
        load_config(CONFIGS / "demo_xray.yaml", ["split.val=0.5", "split.test=0.45"])


def test_flatten_gives_dotted_params():
    flat = flatten(load_config(CONFIGS / "demo_mri.yaml"))
    assert flat["data.kind"] == "mri" and flat["preprocess.mri.img_size"] == "[48, 48, 32]"
