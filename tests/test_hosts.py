"""The federation across hosts: each SuperNode in its own network namespace, reaching
the SuperLink by its link address over TLS, with SuperNode authentication on."""

import os
import shutil

import pytest

import launch
from certs import make_certificates
from hosts import linked_hosts
from logs import client_event_files, client_wandb_runs, read_tensorboard, wait_for_text

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2"),
]


def run_across_hosts(folder, dataset_dir, client_apps, rounds, during_the_run=lambda processes, hosts: None):
    """Run the federation with one test host per client; return the server's log."""
    with linked_hosts(len(client_apps)) as (superlink_address, hosts):
        certificates = make_certificates(folder / "certificates", [superlink_address, "127.0.0.1"])
        commands = launch.federation_commands(client_apps, certificates=certificates,
                                              superlink_host=superlink_address)
        commands = launch.with_authentication(commands, folder / "keys")
        for i, host in enumerate(hosts):
            commands[f"client-{i}"] = host.command(commands[f"client-{i}"])
        env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(folder),
               "RUN_CONFIG": f'num-server-rounds={rounds},dataset="{dataset_dir}",'
                             f'min-clients={len(client_apps)},logdir="{folder / "tb"}"'}
        with launch.federation(commands, folder, env) as processes:
            during_the_run(processes, hosts)
            assert processes["server"].wait(timeout=600) == 0
    server_log = (folder / "server.log").read_text()
    assert f"Run finished {rounds} round(s)" in server_log
    superlink_log = (folder / "superlink.log").read_text()
    assert f"Starting Fleet API (gRPC-rere) on {superlink_address}:" in superlink_log
    assert f"Client authentication enabled with {len(client_apps)} known public keys" in superlink_log
    return server_log


def test_every_round_completes_with_each_client_on_its_own_host_over_tls_and_authenticated(tmp_path, dataset_dir):
    rounds = 3
    server_log = run_across_hosts(tmp_path, dataset_dir, ["tb_app", "wandb_app"], rounds)
    assert server_log.count("aggregate_fit: received 2 results and 0 failures") == rounds
    assert server_log.count("aggregate_evaluate: received 2 results and 0 failures") == rounds

    every_round = list(range(1, rounds + 1))
    [event_file] = client_event_files(tmp_path / "tb")
    scalars = read_tensorboard(event_file)
    for tag in ("train/loss", "train/fit_time", "eval/loss", "eval/accuracy"):
        assert sorted(scalars[tag]) == every_round, tag
    [(wandb_id, wandb_run)] = client_wandb_runs(tmp_path).items()
    run_id, wandb_node = wandb_id.rsplit("_", 1)
    assert wandb_run["name"] == f"Node ID: {wandb_node}" and wandb_run["group"] == f"Run ID: {run_id}"
    assert event_file.parent.parent.name == run_id and event_file.parent.name != wandb_node
    assert sorted(wandb_run["history"]) == every_round
    assert all({"train/loss", "eval/loss"} <= set(row) for row in wandb_run["history"].values())


def test_a_host_cut_off_after_round_1_rejoins_when_its_link_is_back_and_the_run_finishes(tmp_path, dataset_dir):
    rounds = 6

    def cut_host_1_after_round_1(processes, hosts):
        wait_for_text(tmp_path / "server.log", "fit progress: (1,", 300)
        hosts[1].cut_off()
        wait_for_text(tmp_path / "server.log", "and 1 failures", 120)
        hosts[1].reconnect()

    server_log = run_across_hosts(tmp_path, dataset_dir, ["tb_app", "tb_app"], rounds, cut_host_1_after_round_1)
    assert server_log.count("and 1 failures") >= 1
    assert server_log.count("aggregate_fit: received 2 results and 0 failures") >= 2  # round 1, and after
    [server_events] = (tmp_path / "tb").glob("*/server/events.out.tfevents.*")
    server = read_tensorboard(server_events)
    assert sum(server["train/clients_failed"].values()) + sum(server["eval/clients_failed"].values()) >= 1
    assert server["train/clients_returned"][rounds] == 2  # the cut-off host is back by the last round

    trained = [sorted(read_tensorboard(path)["train/fit_time"]) for path in client_event_files(tmp_path / "tb")]
    assert len(trained) == 2  # the cut-off node kept its node id: one event file each
    assert list(range(1, rounds + 1)) in trained  # the other host trained every round
    assert all(node[0] == 1 and node[-1] == rounds for node in trained)  # and the cut-off one is back
