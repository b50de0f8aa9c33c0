"""The app's settings: every default, and how a run overrides them.

Flower passes a run config to the apps only under `flower-simulation --app .
--run-config ...`; under `flower-server-app` and `flower-client-app` it is empty. So
the defaults live here, and both ways of running take overrides in Flower's own
`--run-config` syntax from the RUN_CONFIG environment variable, for example:

    RUN_CONFIG='num-server-rounds=5,dataset="../shared/data/cifar10"'
"""

import os
from pathlib import Path
from typing import Mapping, Optional, Tuple

from flwr.common.config import parse_config_args
from flwr.common.typing import UserConfig

ENV_VAR = "RUN_CONFIG"

# Relative paths mean the folder where the user started the command. flower-simulation
# runs the ClientApp in a copy of the project elsewhere; its actors inherit this.
LAUNCH_DIR = os.environ.setdefault("FLWR_APP_LAUNCH_DIR", os.getcwd())

# CIFAR-10 from a local copy in the hub's parquet layout where there is one (as on the
# machines this project is built on, which have no route to the hub), else from the hub.
LOCAL_CIFAR10 = "../shared/data/cifar10"
DEFAULT_DATASET = LOCAL_CIFAR10 if Path(LAUNCH_DIR, LOCAL_CIFAR10).is_dir() else "uoft-cs/cifar10"

DEFAULTS: UserConfig = {
    "num-server-rounds": 3,
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 0.01,
    "momentum": 0.9,
    "fraction-fit": 1.0,
    "fraction-evaluate": 1.0,
    "min-clients": 2,
    # The seed's flow runs two clients on one machine: each takes half of its cores.
    "torch-threads": max(1, (os.cpu_count() or 2) // 2),
    "dataset": DEFAULT_DATASET,
    "logdir": ".runs_history/",
    "wandb-project": "Custom mods example",
    # Where the server logs its global view of each round: tensorboard, wandb, both or "".
    "server-logging": "tensorboard,wandb",
}
SERVER_BACKENDS = ("tensorboard", "wandb")

POSITIVE_INTEGERS = ("num-server-rounds", "local-epochs", "batch-size", "min-clients", "torch-threads")
FRACTIONS = ("fraction-fit", "fraction-evaluate")


class ConfigError(SystemExit):
    """A setting has a value the app cannot run with: the process stops with this message.

    A SystemExit, so that it gets past the `except Exception` with which Flower turns
    a ClientApp's errors into error replies: one clear line, not a reply per round.
    """


def load_settings(run_config: Optional[Mapping] = None) -> UserConfig:
    """Return the defaults, overridden by Flower's run config, then by $RUN_CONFIG.

    Checks every value and turns a local dataset folder into an absolute path, so
    that it still points at the data where Flower runs the app from another folder.
    """
    try:
        from_env = parse_config_args([os.environ.get(ENV_VAR, "")])
    except ValueError as error:  # tomli's TOMLDecodeError
        raise ConfigError(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is not valid: {error}") from None
    settings = {**DEFAULTS, **(run_config or {}), **from_env}
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
    for key, value in settings.items():
        _check(key, value)
    dataset = Path(LAUNCH_DIR, os.path.expanduser(str(settings["dataset"])))
    if dataset.exists():
        settings["dataset"] = str(dataset.resolve())
    elif str(settings["dataset"]).startswith((".", "/", "~")):
        raise ConfigError(f"setting 'dataset': folder {settings['dataset']!r} does not exist")
    return settings


def _check(key: str, value: object) -> None:
    expected = type(DEFAULTS[key])
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or isinstance(value, bool):
        kind = {int: "an integer", float: "a number", str: "a string"}[expected]
        raise ConfigError(f"setting {key!r} must be {kind}, got {value!r}")
    if key in POSITIVE_INTEGERS and value < 1:
        raise ConfigError(f"setting {key!r} must be at least 1, got {value!r}")
    if key in FRACTIONS and not 0.0 <= value <= 1.0:
        raise ConfigError(f"setting {key!r} must be in [0, 1], got {value!r}")
    if key == "learning-rate" and value <= 0:
        raise ConfigError(f"setting {key!r} must be positive, got {value!r}")
    if key == "server-logging" and not set(value.split(",")) <= {"", *SERVER_BACKENDS}:
        raise ConfigError(f"setting {key!r} must name some of {SERVER_BACKENDS}, got {value!r}")
    if key == "momentum" and not 0.0 <= value < 1.0:
        raise ConfigError(f"setting {key!r} must be in [0, 1), got {value!r}")


def load_partition(node_config: Mapping) -> Tuple[int, int]:
    """Return (partition-id, num-partitions) from a node config; (0, 1) when unset.

    Without them a node trains on the whole training split.
    """
    if "partition-id" not in node_config and "num-partitions" not in node_config:
        return 0, 1
    values = {}
    for key in ("partition-id", "num-partitions"):
        value = node_config.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(
                f"node config {key!r} must be an integer, got {value!r}: pass both, "
                'e.g. --node-config "partition-id=0,num-partitions=2"'
            )
        values[key] = value
    partition_id, num_partitions = values["partition-id"], values["num-partitions"]
    if num_partitions < 1:
        raise ConfigError(f"node config 'num-partitions' must be at least 1, got {num_partitions}")
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node config 'partition-id' must be in [0, {num_partitions - 1}] "
            f"for num-partitions={num_partitions}, got {partition_id}"
        )
    return partition_id, num_partitions
