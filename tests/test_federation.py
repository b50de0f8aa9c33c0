"""End to end: real Flower processes on loopback, logs read back from disk."""

import os
import subprocess

import pytest

import launch
from conftest import PROJECT_DIR
from logs import client_event_files, client_wandb_runs, read_tensorboard

pytestmark = pytest.mark.slow

ROUNDS = 3
TRAIN_TAGS = ["train/loss", "train/accuracy", "train/fit_time", "train/bytes_received", "train/bytes_sent"]
EVAL_TAGS = ["eval/loss", "eval/accuracy", "eval/eval_time", "eval/bytes_received", "eval/bytes_sent"]
SEED_COMMANDS = [
    "flower-superlink --insecure",
    "flower-client-app client:wandb_app --insecure",
    "flower-client-app client:tb_app --insecure",
    "flower-server-app server:app --insecure",
]


@pytest.fixture
def workdir(tmp_path, dataset_dir, monkeypatch):
    """A fresh folder to start the commands from, with the settings in RUN_CONFIG."""
    monkeypatch.setenv("RUN_CONFIG", f'num-server-rounds={ROUNDS},dataset="{dataset_dir}"')
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_every_round_logged(scalars, tags):
    for tag in tags:
        assert sorted(scalars[tag]) == list(range(1, ROUNDS + 1)), tag


def test_the_seed_commands_run_as_written_and_each_client_logs_every_round(workdir, monkeypatch):
    # As a user types them, from the project folder; only the log folders move to tmp.
    monkeypatch.setenv("RUN_CONFIG", os.environ["RUN_CONFIG"] + f',logdir="{workdir / "tb"}"')
    monkeypatch.setenv("WANDB_DIR", str(workdir))
    monkeypatch.chdir(PROJECT_DIR)
    commands = dict(zip(["superlink", "client-0", "client-1", "server"], map(str.split, SEED_COMMANDS)))
    with launch.federation(commands, workdir, dict(os.environ)) as processes:
        assert processes["server"].wait(timeout=600) == 0

    server_log = (workdir / "server.log").read_text()
    assert f"Run finished {ROUNDS} round(s)" in server_log
    assert server_log.count("aggregate_fit: received 2 results and 0 failures") == ROUNDS
    assert server_log.count("aggregate_evaluate: received 2 results and 0 failures") == ROUNDS

    [event_file] = client_event_files(workdir / "tb")
    run_id, tb_node_id = event_file.parent.parent.name, event_file.parent.name
    assert_every_round_logged(read_tensorboard(event_file), TRAIN_TAGS + EVAL_TAGS)

    [(wandb_id, wandb_run)] = client_wandb_runs(workdir).items()
    wandb_run_id, wandb_node_id = wandb_id.rsplit("_", 1)
    assert wandb_run_id == run_id and wandb_node_id != tb_node_id
    assert (wandb_run["group"], wandb_run["name"]) == (f"Run ID: {run_id}", f"Node ID: {wandb_node_id}")
    assert wandb_run["project"] == "Custom mods example"
    history = wandb_run["history"]
    assert sorted(history) == list(range(1, ROUNDS + 1))
    assert all(set(TRAIN_TAGS + EVAL_TAGS) <= set(row) for row in history.values())


def test_the_launcher_runs_a_federation_on_partitions_and_stops_every_process(workdir):
    code = launch.run(["wandb_app", "tb_app"], os.environ["RUN_CONFIG"], workdir / "logs", quiet=True)
    assert code == 0
    client_logs = [(workdir / "logs" / f"client-{i}.log").read_text() for i in range(2)]
    assert all("Disconnect and shut down" in log for log in client_logs)
    [event_file] = client_event_files(workdir / ".runs_history")
    assert_every_round_logged(read_tensorboard(event_file), TRAIN_TAGS + EVAL_TAGS)
    assert len(client_wandb_runs(workdir)) == 1


@pytest.mark.parametrize("client_app", ["tb_app", "wandb_app"])
def test_the_simulation_engine_logs_every_round_of_each_node_where_it_was_started(workdir, client_app):
    command = [
        "flower-simulation", "--server-app", "server:app", "--client-app", f"client:{client_app}",
        "--num-supernodes", "2", "--app-dir", str(PROJECT_DIR),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert f"Run finished {ROUNDS} round(s)" in result.stderr + result.stdout, result.stderr[-3000:]

    if client_app == "tb_app":
        event_files = client_event_files(workdir / ".runs_history")
        assert len({path.parent for path in event_files}) == 2  # two nodes
        assert len(event_files) == 2  # one event file each
        for event_file in event_files:
            assert_every_round_logged(read_tensorboard(event_file), TRAIN_TAGS + EVAL_TAGS)
    else:
        runs = client_wandb_runs(workdir)
        assert len(runs) == 2
        for run in runs.values():
            assert sorted(run["history"]) == list(range(1, ROUNDS + 1))
            assert all(set(TRAIN_TAGS + EVAL_TAGS) <= set(row) for row in run["history"].values())


def test_a_client_with_a_bad_node_config_stops_with_one_clear_error_before_training(workdir):
    commands = launch.federation_commands(["tb_app"])
    commands["client-0"][-1] = "partition-id=2,num-partitions=2"
    env = {**os.environ, "RUN_CONFIG": os.environ["RUN_CONFIG"] + ",min-clients=1"}
    with launch.federation(commands, workdir, env) as processes:
        assert processes["client-0"].wait(timeout=120) == 1
    client_log = (workdir / "client-0.log").read_text()
    assert "node config 'partition-id' must be in [0, 1] for num-partitions=2, got 2" in client_log
    assert "Traceback" not in client_log and not client_event_files(workdir / ".runs_history")
