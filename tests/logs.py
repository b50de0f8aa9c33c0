"""Read the mods' logs back from disk, with the backends' own readers."""

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Tuple

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2
from wandb.sdk.internal import datastore


def read_tensorboard(event_file: Path) -> Dict[str, Dict[int, float]]:
    """{tag: {step: value}} of one event file."""
    accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {
        tag: {event.step: event.value for event in accumulator.Scalars(tag)}
        for tag in accumulator.Tags()["scalars"]
    }


def read_wandb(wandb_dir: Path, timeout: float = 10.0) -> Dict[str, dict]:
    """{W&B run id: {"name", "group", "project", "pieces", "history": {step: row}}}.

    Offline, each finished piece of a run is a folder `offline-run-<time>-<id>`;
    rows of the same step across pieces are merged, as `wandb sync` does.
    `run.finish()` returns a few milliseconds before W&B's service has written the
    piece's last records: wait up to `timeout` for every piece to end with its exit record.
    """
    deadline = time.monotonic() + timeout
    while True:
        runs, complete = _read_wandb_once(wandb_dir)
        if complete or time.monotonic() > deadline:
            return runs
        time.sleep(0.05)


def _read_wandb_once(wandb_dir: Path) -> Tuple[Dict[str, dict], bool]:
    runs: Dict[str, dict] = {}
    complete = True
    for run_file in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        kind = None
        store = datastore.DataStore()
        store.open_for_scan(str(run_file))
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, {"history": defaultdict(dict), "pieces": 0})
                run.update(name=record.run.display_name, group=record.run.run_group,
                           project=record.run.project)
                run["pieces"] += 1
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                run["history"][row["_step"]].update(row)
        complete = complete and kind == "exit"
    return runs, complete


def client_event_files(logdir: Path) -> List[Path]:
    """The clients' event files: the server logs beside them, under `server/`."""
    return sorted(path for path in logdir.glob("*/*/events.out.tfevents.*") if path.parent.name != "server")


def client_wandb_runs(folder: Path) -> Dict[str, dict]:
    """The clients' W&B runs: the server's is named `Server`."""
    return {run_id: run for run_id, run in read_wandb(folder).items() if run["name"] != "Server"}


def wait_for_text(log_file: Path, text: str, timeout: float) -> None:
    """Wait until a process's log file says `text`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (log_file.exists() and text in log_file.read_text()):
        assert time.monotonic() < deadline, f"{log_file.name} did not say {text!r} in {timeout} s"
        time.sleep(0.1)
