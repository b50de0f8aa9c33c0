"""The one-command federation, the server's global view, and looking at it as a user does."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import launch
from conftest import PROJECT_DIR
from logs import read_tensorboard, read_wandb

pytestmark = pytest.mark.slow

ROUNDS = 2


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset_dir):
    """A federation of two TensorBoard clients, run to its end by the launcher."""
    folder = tmp_path_factory.mktemp("federation")
    command = [sys.executable, str(PROJECT_DIR / "launch.py"), "--rounds", str(ROUNDS),
               "--clients", "tb_app,tb_app", "--dataset", str(dataset_dir)]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    [run_dir] = (folder / ".runs_history").iterdir()
    return folder, run_dir, result.stdout


def test_the_launcher_shows_each_round_and_says_where_the_logs_are(finished_run):
    folder, _, output = finished_run
    assert [int(n) for n in re.findall(r"round (\d+) done", output)] == list(range(1, ROUNDS + 1))
    assert str(folder / "federation-logs") in output and "tensorboard --logdir" in output


def test_the_server_logs_its_global_view_of_every_round_to_tensorboard_and_wandb(finished_run):
    folder, run_dir, _ = finished_run
    [event_file] = (run_dir / "server").iterdir()
    scalars = read_tensorboard(event_file)
    rounds = list(range(1, ROUNDS + 1))
    assert sorted(scalars["central/accuracy"]) == [0, *rounds]  # round 0: the initial model
    assert sorted(scalars["central/loss"]) == [0, *rounds]
    for tag in ("train/loss", "train/accuracy", "eval/loss", "eval/accuracy"):
        assert sorted(scalars[tag]) == rounds, tag
    assert scalars["train/clients_returned"] == {r: 2 for r in rounds}
    assert scalars["train/clients_failed"] == {r: 0 for r in rounds}
    assert scalars["eval/clients_returned"] == {r: 2 for r in rounds}

    server_run = read_wandb(folder)[f"{run_dir.name}_Server"]
    assert (server_run["name"], server_run["group"]) == ("Server", f"Run ID: {run_dir.name}")
    assert sorted(server_run["history"]) == [0, *rounds]
    assert server_run["history"][ROUNDS]["central/accuracy"] == pytest.approx(scalars["central/accuracy"][ROUNDS])


@pytest.fixture(scope="module")
def tensorboard_url(finished_run):
    """`tensorboard --logdir` on the finished run's logs, as a user starts it."""
    folder = finished_run[0]
    port = launch.free_port()
    process = subprocess.Popen(["tensorboard", "--logdir", str(folder / ".runs_history"),
                                "--host", "127.0.0.1", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        launch.wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        launch.stop([process])


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_tensorboard_serves_each_node_and_the_server_with_one_point_per_round(finished_run, tensorboard_url):
    run_dir = finished_run[1]
    expected_runs = {f"{run_dir.name}/{node.name}" for node in run_dir.iterdir()}
    assert len(expected_runs) == 3  # two nodes and the server
    deadline = time.monotonic() + 60
    while set(get_json(f"{tensorboard_url}/data/runs")) != expected_runs and time.monotonic() < deadline:
        time.sleep(0.5)  # tensorboard loads the event files in the background
    tags = get_json(f"{tensorboard_url}/data/plugin/scalars/tags")
    assert set(tags) == expected_runs
    for run in expected_runs:
        tag = "central/accuracy" if run.endswith("/server") else "train/fit_time"
        points = get_json(f"{tensorboard_url}/data/plugin/scalars/scalars?run={run}&tag={tag}")
        steps = [step for _, step, _ in points]
        assert steps == ([0] if "server" in run else []) + list(range(1, ROUNDS + 1)), run


@pytest.fixture(scope="module")
def chromium():
    """Debian's chromium; installed here if missing and we may, else the test is skipped."""
    found = shutil.which("chromium")
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env, capture_output=True, timeout=1200)
        found = shutil.which("chromium")
    if not found:
        pytest.skip("Debian's chromium is not installed and could not be installed (needs root and apt-get)")
    return found


def test_the_scalars_dashboard_renders_in_headless_chromium(chromium, tensorboard_url, tmp_path, capsys):
    screenshot = tmp_path / "tensorboard-scalars.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
         "--virtual-time-budget=20000", f"--screenshot={screenshot}", f"{tensorboard_url}/#scalars"],
        capture_output=True, timeout=180,
    )
    with capsys.disabled():
        print(f"\nTensorBoard screenshot: {screenshot}")
    pixels = np.asarray(Image.open(screenshot).convert("L"))
    _, counts = np.unique(pixels, return_counts=True)
    assert counts.max() < 0.97 * pixels.size, "the page is blank"  # not one colour


def launcher_after_round_1(folder, dataset_dir, rounds=50):
    """`launch.py` started in `folder`; return it and its output once round 1 is done."""
    launcher = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "launch.py"), "--rounds", str(rounds), "--dataset", str(dataset_dir)],
        cwd=folder, stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    output = ""
    for line in launcher.stdout:
        output += line
        if "round 1 done" in line:
            break
    return launcher, output


def test_ctrl_c_stops_the_launcher_and_every_process_it_started(tmp_path, dataset_dir):
    launcher, output = launcher_after_round_1(tmp_path, dataset_dir)
    try:
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=30) != 0
    finally:
        launcher.kill()
    pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", output)]
    assert len(pids) == 4
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_client_that_dies_mid_run_is_reported_and_the_launcher_fails_after_the_run_ends(tmp_path, dataset_dir):
    launcher, output = launcher_after_round_1(tmp_path, dataset_dir, rounds=3)
    try:
        os.kill(int(re.search(r"started client-0 \(pid (\d+)\)", output)[1]), signal.SIGKILL)
        output += launcher.communicate(timeout=300)[0]
    finally:
        launcher.kill()
    assert "client-0 stopped with exit code -9 before the run ended" in output
    assert "round 3 done" in output  # the run went on with client-1
    assert launcher.returncode != 0 and "FAILED" in output
