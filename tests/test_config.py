"""Settings: defaults, overrides, and clear errors for bad values."""

import pytest

import config
from config import ConfigError, load_partition, load_settings


def test_defaults_apply_when_nothing_overrides_them(monkeypatch):
    monkeypatch.delenv("RUN_CONFIG", raising=False)
    settings = load_settings()
    assert settings["num-server-rounds"] == 3 and settings["logdir"] == ".runs_history/"
    assert settings["wandb-project"] == "Custom mods example"


def test_run_config_env_var_overrides_flowers_run_config_which_overrides_defaults(monkeypatch):
    monkeypatch.setenv("RUN_CONFIG", "num-server-rounds=7")
    settings = load_settings({"num-server-rounds": 5, "local-epochs": 2})
    assert settings["num-server-rounds"] == 7 and settings["local-epochs"] == 2


def test_a_relative_dataset_folder_becomes_absolute_from_the_launch_folder(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    monkeypatch.setattr(config, "LAUNCH_DIR", str(tmp_path))
    monkeypatch.setenv("RUN_CONFIG", 'dataset="data"')
    assert load_settings()["dataset"] == str(tmp_path / "data")


@pytest.mark.parametrize(
    "run_config, named",
    [
        ("num-server-rounds=0", "'num-server-rounds' must be at least 1, got 0"),
        ('batch-size="32"', "'batch-size' must be an integer, got '32'"),
        ("learning-rate=-0.1", "'learning-rate' must be positive, got -0.1"),
        ("fraction-fit=1.5", "'fraction-fit' must be in [0, 1], got 1.5"),
        ('dataset="./no/such/folder"', "'dataset': folder './no/such/folder' does not exist"),
        ("num-server-round=3", "unknown setting(s) ['num-server-round']"),
        ("num-server-rounds=", "RUN_CONFIG='num-server-rounds=' is not valid"),
    ],
)
def test_a_bad_setting_is_an_error_naming_the_setting_and_the_value(monkeypatch, run_config, named):
    monkeypatch.setenv("RUN_CONFIG", run_config)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert named in str(error.value)


def test_without_node_config_a_node_trains_on_the_whole_split():
    assert load_partition({}) == (0, 1)


@pytest.mark.parametrize(
    "node_config, named",
    [
        ({"partition-id": 2, "num-partitions": 2}, "'partition-id' must be in [0, 1] for num-partitions=2, got 2"),
        ({"partition-id": -1, "num-partitions": 2}, "got -1"),
        ({"partition-id": "0", "num-partitions": 2}, "'partition-id' must be an integer, got '0'"),
        ({"partition-id": 0}, "'num-partitions' must be an integer, got None"),
        ({"partition-id": 0, "num-partitions": 0}, "'num-partitions' must be at least 1, got 0"),
    ],
)
def test_a_bad_node_config_is_an_error_naming_the_setting_and_the_value(node_config, named):
    with pytest.raises(ConfigError) as error:
        load_partition(node_config)
    assert named in str(error.value)


def test_the_default_dataset_is_a_local_copy_where_there_is_one_else_the_hub():
    local = config.Path(config.LAUNCH_DIR, config.LOCAL_CIFAR10)
    assert config.DEFAULTS["dataset"] == (config.LOCAL_CIFAR10 if local.is_dir() else "uoft-cs/cifar10")
