"""TLS, node authentication and secrets, on real Flower processes over loopback."""

import os
import time
from pathlib import Path

import cryptography
import pytest
from packaging.version import Version

import launch
from certs import make_certificates

pytestmark = pytest.mark.slow

ROUNDS = 2


@pytest.fixture
def workdir(tmp_path, dataset_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    return tmp_path, f'num-server-rounds={ROUNDS},dataset="{dataset_dir}"'


def all_text_under(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file():
            yield path, path.read_bytes()


def test_a_whole_run_completes_over_tls_with_authenticated_supernodes_and_a_current_cryptography(workdir):
    # Installed over flwr 1.10's cap (cryptography<43), for its OpenSSL fixes: see the README.
    assert Version(cryptography.__version__) >= Version("48.0.1")
    folder, run_config = workdir
    assert launch.run(["wandb_app", "tb_app"], run_config, folder / "logs", quiet=True, tls=True, auth=True) == 0
    server_log = (folder / "logs" / "server.log").read_text()
    assert f"Run finished {ROUNDS} round(s)" in server_log
    assert server_log.count("aggregate_fit: received 2 results and 0 failures") == ROUNDS
    assert "Client authentication enabled with 2 known public keys" in (folder / "logs" / "superlink.log").read_text()
    for name in ("superlink", "client-0", "client-1", "server"):
        assert "insecure" not in (folder / "logs" / f"{name}.log").read_text().lower(), name


def test_a_client_without_the_ca_certificate_cannot_connect_and_says_why(workdir):
    folder, run_config = workdir
    certificates = make_certificates(folder / "certificates", ["127.0.0.1", "localhost"])
    commands = launch.federation_commands(["tb_app"], certificates=certificates)
    client = [arg for arg in commands["client-0"] if arg not in ("--root-certificates", str(certificates["ca.crt"]))]
    with launch.federation({"superlink": commands["superlink"], "client": client}, folder, dict(os.environ)):
        deadline = time.monotonic() + 60  # it keeps retrying: wait for it to say why it fails
        while "CERTIFICATE_VERIFY_FAILED" not in (folder / "client.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
    client_log = (folder / "client.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in client_log, client_log[-2000:]
    assert "Received:" not in client_log


def test_the_wandb_api_key_never_appears_in_any_log_or_run_file(workdir, monkeypatch):
    folder, run_config = workdir
    secret = "0123456789abcdef0123456789abcdef01234567"  # a fake key, in W&B's 40-hex form
    monkeypatch.setenv("WANDB_API_KEY", secret)
    assert launch.run(["wandb_app", "tb_app"], run_config, folder / "logs", quiet=True) == 0
    files = list(all_text_under(folder))
    assert any(path.suffix == ".wandb" for path, _ in files)
    assert [path for path, content in files if secret.encode() in content] == []


def test_only_listed_supernodes_join_and_the_run_completes_with_them(workdir):
    folder, run_config = workdir
    certificates = make_certificates(folder / "certificates", ["127.0.0.1", "localhost"])
    commands = launch.federation_commands(["tb_app", "tb_app"], certificates=certificates)
    commands = launch.with_authentication(commands, folder / "keys")
    # List client-0 only: client-1 has a key pair the SuperLink doesn't know.
    (folder / "keys" / "known-clients.csv").write_text((folder / "keys" / "client-0.pub").read_text())
    commands["client-1"] += ["--max-retries", "3"]
    env = {**os.environ, "RUN_CONFIG": run_config + ",min-clients=1"}
    with launch.federation(commands, folder, env) as processes:
        assert processes["server"].wait(timeout=300) == 0
    server_log = (folder / "server.log").read_text()
    assert f"Run finished {ROUNDS} round(s)" in server_log
    assert server_log.count("aggregate_fit: received 1 results and 0 failures") == ROUNDS
    assert "Received: train message" in (folder / "client-0.log").read_text()
    assert "Received:" not in (folder / "client-1.log").read_text()
