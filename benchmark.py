"""Measure training speed, mod overhead and the whole federation; write a markdown table.

The machines this runs on are shared and noisy, so every goal is a ratio of two things
measured side by side in the same run, and times are medians of several repeats.

    python benchmark.py --dataset ../shared/data/cifar10            # everything, ~25 min
    python benchmark.py --dataset ../shared/data/cifar10 --only mods,training
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import launch
import mods
import task
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, EvaluateIns, FitIns, Message, Metadata, RecordSet
from flwr.common import ndarrays_to_parameters
from flwr.common.constant import MessageType
from flwr.common.recordset_compat import evaluateins_to_recordset, fitins_to_recordset

SECTIONS = ["training", "mods", "federation", "startup", "accuracy", "scale"]
ROUND_LINE = re.compile(r"fit progress: \((\d+), [\d.]+, \{'accuracy': ([\d.]+)\}, ([\d.]+)\)")
rows: List[Tuple[str, str, str, str]] = []  # (section, measure, result, goal)


def report(section: str, measure: str, result: str, goal: str = "") -> None:
    rows.append((section, measure, result, goal))
    print(f"[{section}] {measure}: {result}  {goal}", flush=True)


def verdict(value: float, limit: float, unit: str = "") -> str:
    return f"at most {limit:g}{unit}: {'met' if value <= limit else 'NOT met'}"


# 1 and 2: local training against the floor -----------------------------------------


def floor_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int = 32) -> float:
    """The floor: one epoch over images already decoded into one uint8 tensor."""
    net = task.Net()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    start = time.perf_counter()
    for batch in torch.randperm(len(labels)).split(batch_size):
        optimizer.zero_grad()
        loss = F.cross_entropy(net(images[batch].float() / 127.5 - 1.0), labels[batch])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def app_round(dataset: str, first: bool) -> float:
    """One fit through the app's own client: loading and decoding included if `first`."""
    import client

    if first:
        task._decoded.clear()
    start = time.perf_counter()
    train_data, val_data = task.load_data(dataset, 0, 2)
    config = {"local-epochs": 1, "batch-size": 32, "learning-rate": 0.01, "momentum": 0.9}
    client.FlowerClient(train_data, val_data).fit(task.get_weights(task.Net()), config)
    return time.perf_counter() - start


def bench_training(dataset: str, repeats: int) -> None:
    (images, labels), _ = task.load_data(dataset, 0, 2)
    report("training", "training rows of partition 0 of 2", f"{len(labels)}")
    floors, firsts, laters = [], [], []
    for _ in range(repeats):  # interleaved, so that load on the machine hits all alike
        floors.append(floor_epoch(images, labels))
        firsts.append(app_round(dataset, first=True))
        laters.append(app_round(dataset, first=False))
    floor = statistics.median(floors)
    first, later = statistics.median(firsts), statistics.median(laters)
    report("training", "floor: one epoch over pre-decoded uint8 images (median)", f"{floor:.2f} s")
    report("training", "app, first round (load + decode + fit)", f"{first:.2f} s = {first / floor:.2f}x floor", verdict(first / floor, 1.5, "x"))
    report("training", "app, later rounds (fit)", f"{later:.2f} s = {later / floor:.2f}x floor", verdict(later / floor, 1.15, "x"))
    report("training", "extra passes after training", "none: fit's metrics come from the training pass", "none")


# 3: mod overhead ---------------------------------------------------------------------


class EchoClient(NumPyClient):
    """Returns the real model's parameters and a few metrics at once: isolates the mod."""

    def fit(self, parameters, config):
        return parameters, 20000, {"loss": 1.5, "accuracy": 0.4}

    def evaluate(self, parameters, config):
        return 1.4, 5000, {"accuracy": 0.45}


def real_message(message_type: str, server_round: int) -> Message:
    parameters = ndarrays_to_parameters(task.get_weights(task.Net()))
    if message_type == MessageType.TRAIN:
        content = fitins_to_recordset(FitIns(parameters, {}), keep_input=True)
    else:
        content = evaluateins_to_recordset(EvaluateIns(parameters, {}), keep_input=True)
    metadata = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=7,
                        reply_to_message="", group_id=str(server_round), ttl=3600.0,
                        message_type=message_type)
    return Message(metadata=metadata, content=content)


def latencies(mod, messages: List[Message]) -> List[float]:
    app = ClientApp(client_fn=lambda context: EchoClient().to_client(), mods=[mod] if mod else [])
    context = Context(node_id=7, node_config={}, state=RecordSet(), run_config={})
    times = []
    for msg in messages:
        start = time.perf_counter()
        app(msg, context)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: List[float], q: float) -> float:
    return float(np.percentile(values, q))


def bench_mods(messages_per_kind: int, fit_seconds: float) -> None:
    os.environ["WANDB_MODE"] = "offline"
    with tempfile.TemporaryDirectory() as folder:
        os.environ["WANDB_DIR"] = folder
        backends = {"tensorboard": mods.get_tensorboard_mod(folder), "wandb": mods.get_wandb_mod("bench")}
        # Train messages of successive rounds (no round end): what logging costs.
        trains = [real_message(MessageType.TRAIN, r) for r in range(1, messages_per_kind + 2)]
        # Whole rounds, train then evaluate: with W&B's finish and resume at each round end.
        rounds = [real_message(kind, r) for r in range(1, messages_per_kind // 2 + 2)
                  for kind in (MessageType.TRAIN, MessageType.EVALUATE)]
        for name, mod in backends.items():
            bare, with_mod = [], []
            for _ in range(3):  # interleave bare and modded runs
                bare += latencies(None, trains)[1:]
                timed = latencies(mod, trains)
                report("mods", f"{name}: first message (opens the writer or run)", f"{timed[0] * 1000:.1f} ms")
                with_mod += timed[1:]
                mods._close_all()
                mods._open_logs.clear()
            added = np.array(with_mod) - np.median(bare)
            p50, p99 = percentile(added, 50) * 1000, percentile(added, 99) * 1000
            limit = 1.0 if name == "tensorboard" else 2.0
            report("mods", f"{name}: added per message after the first, p50 ({len(added)} messages)", f"{p50:.2f} ms", verdict(p50, limit, " ms"))
            report("mods", f"{name}: added per message after the first, p99", f"{p99:.2f} ms", verdict(p99, 5.0, " ms"))
            report("mods", f"{name}: p50 as a share of a fit ({fit_seconds:.1f} s)", f"{p50 / 10 / fit_seconds:.3f} %", verdict(p50 / 10 / fit_seconds, 1.0, " %"))
            bare_round = np.median(latencies(None, rounds)[2:]) * 2
            modded = latencies(mod, rounds)[2:]
            per_round = [a + b for a, b in zip(modded[0::2], modded[1::2])]
            cost = (np.median(per_round) - bare_round) * 1000
            mods._close_all()
            mods._open_logs.clear()
            report("mods", f"{name}: added per round (train + evaluate, W&B finishes and resumes the run)", f"{cost:.1f} ms = {cost / 10 / fit_seconds:.2f} % of a fit", verdict(cost / 10 / fit_seconds, 2.0, " %"))


# 4 and 6: the real federation -------------------------------------------------------


def federation(dataset: str, rounds: int, threads: int) -> Tuple[List[float], List[float], List[float]]:
    """Run launch.py's federation of two TensorBoard clients; per round, return its time,
    the global accuracy after it, and the time the clients spent in the ClientApp."""
    with tempfile.TemporaryDirectory() as folder:
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            run_config = f'num-server-rounds={rounds},torch-threads={threads},dataset="{dataset}"'
            code = launch.run(["tb_app", "tb_app"], run_config, Path(folder) / "logs")
            server_log = (Path(folder) / "logs" / "server.log").read_text()
            in_app = _time_in_client_app(Path(folder) / ".runs_history", rounds)
        finally:
            os.chdir(cwd)
    if code != 0:
        raise RuntimeError(f"the federation failed:\n{server_log[-3000:]}")
    found = [(float(m[2]), float(m[3])) for m in ROUND_LINE.finditer(server_log)]
    ends = [elapsed for _, elapsed in found]
    return [b - a for a, b in zip([0.0] + ends, ends)], [accuracy for accuracy, _ in found], in_app


def _time_in_client_app(logdir: Path, rounds: int) -> List[float]:
    """Per round, the slower client's fit_time + eval_time, as its mod logged them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    per_node = []
    for node_dir in logdir.glob("*/*"):
        if node_dir.name != "server":
            events = EventAccumulator(str(node_dir))
            events.Reload()
            times = [{e.step: e.value for e in events.Scalars(tag)} for tag in ("train/fit_time", "eval/eval_time")]
            per_node.append([times[0][r] + times[1][r] for r in range(1, rounds + 1)])
    return [max(node[r] for node in per_node) for r in range(rounds)]


def run_two_floors_at_once(images_path: Path, threads: int) -> float:
    """Two processes each running the floor's epoch at once; return the slower one."""
    code = (
        "import sys, torch, benchmark as b; torch.set_num_threads(%d); "
        "images, labels = torch.load(sys.argv[1]); print(b.floor_epoch(images, labels))" % threads
    )
    processes = [subprocess.Popen([sys.executable, "-c", code, str(images_path)], stdout=subprocess.PIPE,
                                  text=True, cwd=launch.PROJECT_DIR) for _ in range(2)]
    return max(float(p.communicate()[0].split()[-1]) for p in processes)


def bench_federation(dataset: str, repeats: int) -> None:
    (images, labels), val = task.load_data(dataset, 0, 2)
    with tempfile.TemporaryDirectory() as folder:
        images_path = Path(folder) / "partition.pt"
        torch.save((images, labels), images_path)
        floor = statistics.median(run_two_floors_at_once(images_path, 1) for _ in range(repeats))
    torch.set_num_threads(1)
    start = time.perf_counter()
    task.test(task.Net(), val)
    client_eval = time.perf_counter() - start
    torch.set_num_threads(os.cpu_count() or 1)
    start = time.perf_counter()
    task.test(task.Net(), task.load_test_data(dataset))
    server_eval = time.perf_counter() - start
    reference = floor + client_eval + server_eval
    report("federation", "floor: two processes at once, 1 thread each, one epoch (median)", f"{floor:.2f} s")
    report("federation", "evaluation: a client's validation set + the server's test split", f"{client_eval + server_eval:.2f} s")
    for threads in (1, 2):
        round_times, _, in_app = federation(dataset, rounds=3, threads=threads)
        later = statistics.median(round_times[1:])
        goal = verdict(later / reference, 1.3, "x") if threads == 1 else "(for comparison)"
        report("federation", f"a round of the real flow, torch-threads={threads} (median of rounds 2-3)",
               f"{later:.2f} s = {later / reference:.2f}x (floor + evaluation)", goal)
        outside = later - statistics.median(in_app[1:]) - server_eval
        report("federation", f"  of which outside the ClientApp and the server's test (Flower's messaging), torch-threads={threads}",
               f"{outside:.2f} s")


def bench_accuracy(dataset: str) -> None:
    rounds = 5
    round_times, accuracies, _ = federation(dataset, rounds=rounds, threads=1)
    for server_round, (seconds, accuracy) in enumerate(zip(round_times, accuracies), start=1):
        report("accuracy", f"federated round {server_round}: wall time, global test accuracy", f"{seconds:.1f} s, {accuracy:.4f}")
    # The reference: the same network trained centrally on both partitions' training rows.
    torch.set_num_threads(os.cpu_count() or 1)
    train_data = [task.load_data(dataset, i, 2)[0] for i in range(2)]
    central = (torch.cat([d[0] for d in train_data]), torch.cat([d[1] for d in train_data]))
    net = task.Net()
    for epoch in range(1, rounds + 1):
        task.train(net, central, epochs=1, batch_size=32, learning_rate=0.01, momentum=0.9)
        _, central_accuracy = task.test(net, task.load_test_data(dataset))
        report("accuracy", f"central epoch {epoch}: test accuracy", f"{central_accuracy:.4f}")
    report("accuracy", f"federated accuracy after {rounds} rounds", f"{accuracies[-1]:.4f}", f"at least 0.55: {'met' if accuracies[-1] >= 0.55 else 'NOT met'}")
    gap = (central_accuracy - accuracies[-1]) * 100
    report("accuracy", "central reference minus federated", f"{gap:.1f} points", verdict(gap, 3.0, " points"))


# 5: client start-up -----------------------------------------------------------------


def bench_startup(dataset: str) -> None:
    """Process start until the client has connected, and the peak memory after one round."""
    for client_app in ("tb_app", "wandb_app"):
        with tempfile.TemporaryDirectory() as folder:
            cwd = os.getcwd()
            os.chdir(folder)
            try:
                fleet, driver = launch.free_port(), launch.free_port()
                commands = launch.federation_commands([client_app], fleet, driver)
                env = {**os.environ, "PYTHONUNBUFFERED": "1",
                       "RUN_CONFIG": f'num-server-rounds=1,min-clients=1,dataset="{dataset}"'}
                logs = Path(folder)
                link = launch.start(commands["superlink"], logs / "link.log", env)
                processes = [link]
                try:
                    launch.wait_for_port(fleet, link)
                    start = time.perf_counter()
                    client_process = launch.start(commands["client-0"], logs / "client.log", env)
                    processes.append(client_process)
                    while "Starting insecure" not in (logs / "client.log").read_text():
                        time.sleep(0.01)
                    ready = time.perf_counter() - start
                    server = launch.start(commands["server"], logs / "server.log", env)
                    processes.append(server)
                    server.wait(timeout=900)
                    peak = _peak_mib(client_process.pid)
                finally:
                    launch.stop(processes[::-1])
            finally:
                os.chdir(cwd)
        report("startup", f"client:{client_app}: process start until connected", f"{ready:.2f} s")
        report("startup", f"client:{client_app}: peak memory (after one round on partition 0 of 2)", f"{peak:.0f} MiB")


# 7: scale, on the Simulation Engine ---------------------------------------------------


def bench_scale(dataset: str) -> None:
    for supernodes in (2, 10, 50):
        with tempfile.TemporaryDirectory() as folder:
            env = {**os.environ, "RUN_CONFIG": f'num-server-rounds=3,dataset="{dataset}"'}
            command = ["flower-simulation", "--server-app", "server:app", "--client-app", "client:tb_app",
                       "--num-supernodes", str(supernodes), "--app-dir", str(launch.PROJECT_DIR)]
            process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            round_ends, fds, peak = [], [], 0.0
            start = time.perf_counter()
            for line in process.stdout:
                if "fit progress" in line:
                    round_ends.append(time.perf_counter() - start)
                    actors = _ray_actor_pids()
                    fds.append(sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in actors))
                    peak = max([peak] + [_peak_mib(pid) for pid in actors])
            process.wait()
            if not round_ends or not fds[-1]:
                raise RuntimeError(f"{supernodes} supernodes: no rounds, or no Ray actor process found")
            rounds = [b - a for a, b in zip(round_ends, round_ends[1:])]
        report("scale", f"{supernodes} supernodes: wall time per round (median of rounds 2-3)", f"{statistics.median(rounds):.1f} s")
        report("scale", f"{supernodes} supernodes: peak memory of a client (Ray actor) process", f"{peak:.0f} MiB")
        report("scale", f"{supernodes} supernodes: open files of the client processes after rounds 1-3",
               f"{fds}", f"flat: {'met' if len(set(fds[1:])) <= 1 else 'NOT met'}")


def _ray_actor_pids() -> List[int]:
    pids = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and "ClientAppActor" in Path(f"/proc/{pid}/cmdline").read_text():
                pids.append(int(pid))
        except OSError:
            pass
    return pids


def _peak_mib(pid: int) -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) / 1024


# ----------------------------------------------------------------------------------------


def write_table(path: Path, argv: List[str]) -> None:
    lines = [
        "# Benchmark",
        "",
        f"`python benchmark.py {' '.join(argv)}` on {time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"torch {torch.__version__} on {task.DEVICE}.",
        "",
        "| section | measure | result | goal |",
        "|---|---|---|---|",
        *(f"| {s} | {m} | {r} | {g} |" for s, m, r, g in rows),
        "",
    ]
    path.write_text("\n".join(lines))
    print(f"table written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="CIFAR-10 folder in the hub's parquet layout, or hub id")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated, of: {','.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each side-by-side timing (default: 3)")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARK.md"), help="markdown table to write")
    args = parser.parse_args()
    dataset = str(Path(args.dataset).resolve()) if Path(args.dataset).exists() else args.dataset
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    only = args.only.split(",")
    if "training" in only:
        bench_training(dataset, args.repeats)
    if "mods" in only:
        fit_seconds = min(app_round(dataset, first=False) for _ in range(2))  # data decoded once
        bench_mods(100, fit_seconds)
    sections: Dict[str, Callable[[], None]] = {
        "federation": lambda: bench_federation(dataset, args.repeats),
        "startup": lambda: bench_startup(dataset),
        "accuracy": lambda: bench_accuracy(dataset),
        "scale": lambda: bench_scale(dataset),
    }
    for name, bench in sections.items():
        if name in only:
            bench()
    write_table(args.out, sys.argv[1:])


if __name__ == "__main__":
    main()
