"""Run a whole local federation with one command: the four commands a user would type.

Starts `flower-superlink`, one `flower-client-app` per client (each on its own IID
partition) and `flower-server-app` on free ports (on loopback unless told otherwise),
shows the rounds as they complete, and stops every process it started when the run
ends or on Ctrl-C. Each process writes to its own log file. Run `python launch.py
--help` for the options.
"""

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

from flwr.common.config import parse_config_args

from certs import make_certificates, make_key_pair
from config import load_settings

PROJECT_DIR = Path(__file__).resolve().parent
CLIENT_APPS = ("wandb_app", "tb_app")
DEFAULT_DRIVER_API = "0.0.0.0:9091"  # flower-superlink's, when not given
GRACE_SECONDS = 5.0
ROUND_DONE = re.compile(r"fit progress: \((\d+), ([\d.]+), \{'accuracy': ([\d.]+)\}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _reset_sigint() -> None:
    # A background job of a non-interactive shell ignores SIGINT, and its children
    # inherit that: give each process Python's default back, so SIGINT stops it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(command: List[str], log_path: Path, env: Dict[str, str]) -> subprocess.Popen:
    """Start one process in its own session, its output going to `log_path`."""
    with log_path.open("w") as log_file:
        return subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops them in order
            preexec_fn=_reset_sigint,
        )


def stop(processes: List[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each process still running, wait up to `grace` seconds, then SIGKILL."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until something listens on 127.0.0.1:`port`, or fail if `process` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def federation_commands(
    clients: List[str],
    fleet_port: Optional[int] = None,
    driver_port: Optional[int] = None,
    project_dir: Path = PROJECT_DIR,
    certificates: Optional[Dict[str, Path]] = None,
    superlink_host: str = "127.0.0.1",
) -> Dict[str, List[str]]:
    """The seed's four commands, on the given ports (free ones if not given), one
    client per partition.

    The clients reach the SuperLink at `superlink_host`; the ServerApp, on the same
    machine as the SuperLink, at 127.0.0.1 (the Driver API is not exposed). With
    `certificates` (from certs.make_certificates), over TLS instead of --insecure.
    """
    fleet_port = fleet_port or free_port(superlink_host)
    driver_port = driver_port or free_port()
    if certificates:
        link_security = ["--ssl-ca-certfile", str(certificates["ca.crt"]),
                         "--ssl-certfile", str(certificates["server.pem"]),
                         "--ssl-keyfile", str(certificates["server.key"])]
        app_security = ["--root-certificates", str(certificates["ca.crt"])]
    else:
        link_security = app_security = ["--insecure"]
    common = [*app_security, "--dir", str(project_dir)]
    commands = {
        "superlink": [
            "flower-superlink", *link_security,
            "--fleet-api-address", f"{superlink_host}:{fleet_port}",
            "--driver-api-address", f"127.0.0.1:{driver_port}",
        ],
    }
    for partition_id, client_app in enumerate(clients):
        commands[f"client-{partition_id}"] = [
            "flower-client-app", f"client:{client_app}", *common,
            "--superlink", f"{superlink_host}:{fleet_port}",
            "--node-config", f"partition-id={partition_id},num-partitions={len(clients)}",
        ]
    commands["server"] = [
        "flower-server-app", "server:app", *common, "--superlink", f"127.0.0.1:{driver_port}"
    ]
    return commands


def with_authentication(commands: Dict[str, List[str]], key_folder: Path) -> Dict[str, List[str]]:
    """Turn on SuperNode authentication: a key pair for the SuperLink and for each
    client in `key_folder`, every client's public key listed in `known-clients.csv`."""
    keys = {name: make_key_pair(key_folder, name) for name in commands if name != "server"}
    known_clients = key_folder / "known-clients.csv"
    known_clients.write_text("".join(keys[name]["public"].read_text() for name in keys if name != "superlink"))
    authenticated = {name: list(command) for name, command in commands.items()}
    authenticated["superlink"] += [
        "--auth-list-public-keys", str(known_clients),
        "--auth-superlink-private-key", str(keys["superlink"]["private"]),
        "--auth-superlink-public-key", str(keys["superlink"]["public"]),
    ]
    for name in keys.keys() - {"superlink"}:
        authenticated[name] += ["--auth-supernode-private-key", str(keys[name]["private"]),
                                "--auth-supernode-public-key", str(keys[name]["public"])]
    return authenticated


@contextmanager
def federation(
    commands: Dict[str, List[str]],
    log_dir: Path,
    env: Dict[str, str],
    say: Callable[[str], None] = lambda message: None,
) -> Iterator[Dict[str, subprocess.Popen]]:
    """Start the commands in order, each logging to `<log_dir>/<name>.log`; on leaving,
    stop every one of them, the SuperLink last (the clients say goodbye to it).

    The SuperLink starts first and the others once it listens: flower-server-app gives
    up at once if the SuperLink is not there yet.
    """
    processes: Dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            log_path = log_dir / f"{name}.log"
            processes[name] = start(command, log_path, env)
            say(f"started {name} (pid {processes[name].pid}): {' '.join(command)}\n    log: {log_path}")
            if name == "superlink":
                flag = "--driver-api-address"
                address = command[command.index(flag) + 1] if flag in command else DEFAULT_DRIVER_API
                wait_for_port(int(address.rsplit(":", 1)[1]), processes[name])
        yield processes
    finally:
        stop([process for name, process in processes.items() if name != "superlink"])
        stop([processes["superlink"]] if "superlink" in processes else [])


def run(
    clients: List[str],
    run_config: str,
    log_dir: Path,
    quiet: bool = False,
    tls: bool = False,
    auth: bool = False,
    superlink_host: str = "127.0.0.1",
) -> int:
    """Run one federation to its end; return 0 if every process did its part.

    With `tls`, a fresh CA and SuperLink certificate go to `<log_dir>/certificates/`;
    with `auth` (needs `tls`), fresh authentication keys to `<log_dir>/keys/`.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RUN_CONFIG": run_config, "PYTHONUNBUFFERED": "1"}
    certificates = None
    if tls:
        hosts = list(dict.fromkeys([superlink_host, "127.0.0.1", "localhost"]))
        certificates = make_certificates(log_dir / "certificates", hosts)
    commands = federation_commands(clients, certificates=certificates, superlink_host=superlink_host)
    if auth:
        commands = with_authentication(commands, log_dir / "keys")
    say = (lambda *args: None) if quiet else print
    try:
        with federation(commands, log_dir, env, say) as processes:
            return _follow_server(processes, log_dir / "server.log", say)
    except KeyboardInterrupt:
        say("interrupted: stopped the federation")
        return 130


def _follow_server(processes: Dict[str, subprocess.Popen], server_log: Path, say) -> int:
    """Wait for the ServerApp to finish, printing each round as it completes.

    A client that stops early is reported and the run goes on with the others (the
    server drops lost clients after round 1); without the SuperLink or any client it
    can't, so it ends here. Returns 0 only if every process lasted to the end.
    """
    server = processes["server"]
    seen, stopped = 0, set()
    clients = {name for name in processes if name.startswith("client-")}
    while True:
        finished = server.poll() is not None
        for match in ROUND_DONE.finditer(server_log.read_text()):
            if int(match[1]) > seen:
                seen = int(match[1])
                say(f"round {seen} done: global test accuracy {float(match[3]):.4f}")
        for name, process in processes.items():
            if name != "server" and name not in stopped and process.poll() is not None:
                stopped.add(name)
                say(f"{name} stopped with exit code {process.returncode} before the run ended; "
                    f"its log: {server_log.parent / name}.log")
        if finished:
            return server.returncode or (1 if stopped else 0)
        if "superlink" in stopped or clients <= stopped:
            say("the run can't go on without the SuperLink or any client: stopping it")
            return 1
        time.sleep(0.5)


def _client_apps(value: str) -> List[str]:
    apps = value.split(",")
    unknown = [app for app in apps if app not in CLIENT_APPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown ClientApp(s) {unknown}; choose from {CLIENT_APPS}")
    return apps


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # stop the federation as Ctrl-C does


def main(argv: Optional[List[str]] = None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="server rounds (default: the app's)")
    parser.add_argument(
        "--clients", default="wandb_app,tb_app", type=_client_apps,
        help="comma-separated ClientApp of each client, one partition each "
        "(default: wandb_app,tb_app)",
    )
    parser.add_argument("--dataset", default=None, help="hub id or local folder (default: the app's)")
    parser.add_argument("--tls", action="store_true",
                        help="connect over TLS, with a fresh CA and certificate in <logs>/certificates/")
    parser.add_argument("--auth", action="store_true",
                        help="with --tls: admit only SuperNodes with known keys, made fresh in <logs>/keys/")
    parser.add_argument("--superlink-host", default="127.0.0.1",
                        help="address the SuperLink's Fleet API listens on and the clients dial "
                        "(default: 127.0.0.1; the ServerApp always uses 127.0.0.1)")
    parser.add_argument(
        "--logs", type=Path, default=Path("federation-logs"),
        help="folder for each process's output (default: ./federation-logs)",
    )
    args = parser.parse_args(argv)
    if args.auth and not args.tls:
        parser.error("--auth needs --tls: flwr authenticates SuperNodes over TLS only")
    overrides = [os.environ.get("RUN_CONFIG", "")]
    if args.rounds is not None:
        overrides.append(f"num-server-rounds={args.rounds}")
    if args.dataset is not None:
        overrides.append(f'dataset="{args.dataset}"')
    run_config = ",".join(override for override in overrides if override)
    settings = load_settings(parse_config_args([run_config]))  # a bad setting stops here, first
    code = run(args.clients, run_config, args.logs.resolve(), tls=args.tls, auth=args.auth,
               superlink_host=args.superlink_host)
    print(f"{'finished' if code == 0 else 'FAILED'}; process logs in {args.logs.resolve()}")
    print(f"TensorBoard: tensorboard --logdir {settings['logdir']}    W&B (offline): wandb sync wandb/offline-run-*")
    return code


if __name__ == "__main__":
    sys.exit(main())
