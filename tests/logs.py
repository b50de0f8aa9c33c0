"""Read the mods' logs back from disk, with the backends' own readers."""

import json
from collections import defaultdict
from pathlib import Path
from typing import Dict

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


def read_wandb(wandb_dir: Path) -> Dict[str, dict]:
    """{W&B run id: {"name", "group", "project", "pieces", "history": {step: row}}}.

    Offline, each finished piece of a run is a folder `offline-run-<time>-<id>`;
    rows of the same step across pieces are merged, as `wandb sync` does.
    """
    runs: Dict[str, dict] = {}
    for run_file in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
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
    return runs
