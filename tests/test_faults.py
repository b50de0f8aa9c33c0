"""Faults a real federation meets: killed and restarted clients, and monitoring that
can't work. Real Flower processes on loopback; logs read back from disk."""

import os
import time
from pathlib import Path

import pytest

import launch
from logs import client_event_files, client_wandb_runs, read_tensorboard, wait_for_text

pytestmark = pytest.mark.slow


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def killed_and_restarted(tmp_path_factory, dataset_dir):
    """Two TensorBoard clients; client-1 SIGKILLed once round 1 is done, and restarted
    once the server has counted it failed. Returns the folder, the number of rounds,
    the server's scalars and each client node's scalars."""
    rounds = 6
    folder = tmp_path_factory.mktemp("killed")
    commands = launch.federation_commands(["tb_app", "tb_app"])
    env = {**os.environ, "RUN_CONFIG": f'num-server-rounds={rounds},dataset="{dataset_dir}",'
                                       f'logdir="{folder / "tb"}",server-logging="tensorboard"'}
    server_log = folder / "server.log"
    with launch.federation(commands, folder, env) as processes:
        wait_for_text(server_log, "fit progress: (1,", 300)
        processes["client-1"].kill()
        wait_for_text(server_log, "results and 1 failures", 120)
        processes["client-1-again"] = launch.start(commands["client-1"], folder / "client-1-again.log", env)
        assert processes["server"].wait(timeout=600) == 0
    assert f"Run finished {rounds} round(s)" in text(server_log)
    [server_events] = (folder / "tb").glob("*/server/events.out.tfevents.*")
    nodes = [read_tensorboard(path) for path in client_event_files(folder / "tb")]
    return folder, rounds, read_tensorboard(server_events), nodes


def test_a_run_finishes_without_a_killed_client_and_the_server_counts_the_failure(killed_and_restarted):
    _, rounds, server, _ = killed_and_restarted
    assert sorted(server["train/clients_returned"]) == list(range(1, rounds + 1))
    # The killed node fails every round it is asked to join until the SuperLink
    # marks it offline (its pings stop: within 30 s), then it is no longer asked.
    failures = [server[f"{step}/clients_failed"][r] for step in ("train", "eval") for r in range(1, rounds + 1)]
    assert sum(failures) >= 1 and failures[rounds - 1] == failures[-1] == 0


def test_the_surviving_client_logs_every_round(killed_and_restarted):
    _, rounds, _, nodes = killed_and_restarted
    every_round = list(range(1, rounds + 1))
    survivors = [node for node in nodes if sorted(node["train/fit_time"]) == every_round]
    assert len(survivors) == 1
    for tag in ("train/loss", "train/bytes_sent", "eval/loss", "eval/eval_time"):
        assert sorted(survivors[0][tag]) == every_round, tag


def test_a_client_restarted_after_a_kill_rejoins_as_a_new_node_and_trains_again(killed_and_restarted):
    folder, rounds, server, nodes = killed_and_restarted
    assert len(nodes) == 3  # the survivor, the killed node, and the restarted one under a new node id
    assert "Received: train message" in text(folder / "client-1-again.log")
    rejoined = [node for node in nodes if min(node["train/fit_time"]) > 1]
    assert len(rejoined) == 1 and max(rejoined[0]["train/fit_time"]) == rounds
    assert server["train/clients_returned"][rounds] == 2


def test_clients_killed_right_after_their_round_2_reply_keep_rounds_1_and_2_on_disk(tmp_path, dataset_dir, monkeypatch):
    folder = tmp_path
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(folder)
    commands = launch.federation_commands(["wandb_app", "tb_app"])
    env = {**os.environ, "RUN_CONFIG": f'num-server-rounds=5,dataset="{dataset_dir}"'}
    killed = set()
    with launch.federation(commands, folder, env) as processes:
        deadline = time.monotonic() + 300
        while len(killed) < 2 and time.monotonic() < deadline:
            for client in ("client-0", "client-1"):
                # Two replies a round: the 4th is round 2's evaluate reply.
                if client not in killed and (folder / f"{client}.log").read_text().count("Sent reply") >= 4:
                    processes[client].kill()
                    killed.add(client)
            time.sleep(0.02)
    assert killed == {"client-0", "client-1"}
    [event_file] = client_event_files(folder / ".runs_history")
    scalars = read_tensorboard(event_file)
    assert sorted(scalars["train/fit_time"]) == [1, 2] and sorted(scalars["eval/loss"]) == [1, 2]
    [wandb_run] = client_wandb_runs(folder).values()
    assert sorted(wandb_run["history"]) == [1, 2]
    assert all({"train/fit_time", "eval/loss"} <= set(row) for row in wandb_run["history"].values())


@pytest.fixture(scope="module")
def broken_monitoring(tmp_path_factory, dataset_dir):
    """A 2-round run where W&B is asked to go online with no key (and no network) and
    the TensorBoard logdir can't be created. Returns the folder."""
    folder = tmp_path_factory.mktemp("broken")
    (folder / "a-file").write_text("a file where the logdir's parent folder should be")
    commands = launch.federation_commands(["wandb_app", "tb_app"])
    env = {key: value for key, value in os.environ.items() if key != "WANDB_API_KEY"}
    env.update(WANDB_MODE="online", WANDB_DIR=str(folder), NETRC=str(folder / "no-netrc"),
               RUN_CONFIG=f'num-server-rounds=2,dataset="{dataset_dir}",logdir="{folder / "a-file" / "tb"}"')
    with launch.federation(commands, folder, env) as processes:
        assert processes["server"].wait(timeout=600) == 0
    server_log = text(folder / "server.log")
    assert "Run finished 2 round(s)" in server_log
    assert server_log.count("aggregate_fit: received 2 results and 0 failures") == 2
    return folder


def test_wandb_online_without_a_key_logs_offline_with_one_warning_and_training_goes_on(broken_monitoring):
    client_log = text(broken_monitoring / "client-0.log")
    assert client_log.count("can't go online") == 1 and "no W&B API key" in client_log
    [run] = client_wandb_runs(broken_monitoring).values()
    assert sorted(run["history"]) == [1, 2]
    assert text(broken_monitoring / "server.log").count("can't go online") == 1


def test_an_unwritable_logdir_gives_one_warning_and_training_goes_on(broken_monitoring):
    client_log = text(broken_monitoring / "client-1.log")
    assert client_log.count("tensorboard logging failed") == 1
    assert f"Not a directory: '{broken_monitoring / 'a-file' / 'tb'}" in client_log  # names the folder
    assert text(broken_monitoring / "server.log").count("Server logging to tensorboard failed") == 1
