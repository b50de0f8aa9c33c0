"""The monitoring mods, on real Flower messages around a real ClientApp, with real backends."""

import importlib
import logging
import math
import os
import threading
import time
import uuid

from ray import cloudpickle  # what flower-simulation pickles the ClientApp with
import numpy as np
import pytest
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, Error, FitIns, GetParametersIns, Message, Metadata, RecordSet
from flwr.common import EvaluateIns, ndarrays_to_parameters
from flwr.common.constant import MessageType, MessageTypeLegacy
from flwr.common.logger import FLOWER_LOGGER
from flwr.common.recordset_compat import (
    evaluateins_to_recordset,
    fitins_to_recordset,
    getparametersins_to_recordset,
)

import launch
import mods
from logs import read_tensorboard, read_wandb

RUN_ID = -4242  # run and node ids are signed 64-bit integers, often negative
WEIGHTS = [np.ones((20, 10), dtype=np.float32), np.zeros(10, dtype=np.float32)]


class ScriptedClient(NumPyClient):
    """Returns metrics derived from the round it is asked about, so tests know each value."""

    def __init__(self, node_id: int, extra_metrics: dict) -> None:
        self.node_id, self.extra_metrics = node_id, extra_metrics

    def get_parameters(self, config):
        return WEIGHTS

    def fit(self, parameters, config):
        server_round = int(config["round"])
        return parameters, 10, {"loss": self.node_id + server_round / 10, **self.extra_metrics}

    def evaluate(self, parameters, config):
        server_round = int(config["round"])
        return 2.0 * server_round, 5, {"accuracy": server_round / 100}


def make_app(mod, extra_metrics=None, fail=False):
    def client_fn(context: Context):
        if fail:
            raise RuntimeError("training broke")
        return ScriptedClient(context.node_id, extra_metrics or {}).to_client()

    return ClientApp(client_fn=client_fn, mods=[mod] if mod else [])


def message(message_type: str, node_id: int, server_round: int, run_id: int = RUN_ID) -> Message:
    """A message as flwr 1.10's Driver builds it (`create_message`) for the legacy strategies."""
    parameters = ndarrays_to_parameters(WEIGHTS)
    config = {"round": server_round}
    if message_type == MessageType.TRAIN:
        content = fitins_to_recordset(FitIns(parameters, config), keep_input=True)
    elif message_type == MessageType.EVALUATE:
        content = evaluateins_to_recordset(EvaluateIns(parameters, config), keep_input=True)
    else:
        content = getparametersins_to_recordset(GetParametersIns({}))
    metadata = Metadata(
        run_id=run_id,
        message_id=str(uuid.uuid4()),
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message="",
        group_id=str(server_round) if message_type != MessageTypeLegacy.GET_PARAMETERS else "",
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(metadata=metadata, content=content)


def send(app: ClientApp, msg: Message) -> Message:
    context = Context(node_id=msg.metadata.dst_node_id, node_config={}, state=RecordSet(), run_config={})
    return app(msg, context)


def run_rounds(app, node_ids, rounds):
    for server_round in rounds:
        for node_id in node_ids:
            send(app, message(MessageType.TRAIN, node_id, server_round))
        for node_id in node_ids:
            send(app, message(MessageType.EVALUATE, node_id, server_round))


def expected_values(node_id, server_round):
    return {
        "train/loss": node_id + server_round / 10,
        "eval/loss": 2 * server_round,
        "eval/accuracy": server_round / 100,
    }


@pytest.fixture(autouse=True)
def fresh_registry(tmp_path, monkeypatch):
    """Each test starts with no open logs, W&B offline in its own folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    mods._close_all()
    mods._open_logs.clear()
    mods._warned.clear()
    yield
    mods._close_all()
    mods._open_logs.clear()


@pytest.fixture
def warnings():
    """The warnings Flower's logger emits during the test."""
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    FLOWER_LOGGER.addHandler(handler)
    yield records
    FLOWER_LOGGER.removeHandler(handler)


class TensorBoard:
    name = "tensorboard"

    def __init__(self, tmp_path):
        self.logdir = tmp_path / "tb"
        self.mod = mods.get_tensorboard_mod(str(self.logdir))

    def read(self):
        """{node_id: {step: {tag: value}}}, one event file per node asserted."""
        nodes = {}
        for node_dir in (self.logdir / str(RUN_ID)).iterdir():
            [event_file] = node_dir.iterdir()
            rows = {}
            for tag, points in read_tensorboard(event_file).items():
                for step, value in points.items():
                    rows.setdefault(step, {})[tag] = value
            nodes[int(node_dir.name)] = rows
        return nodes


class Wandb:
    name = "wandb"

    def __init__(self, tmp_path):
        self.folder = tmp_path
        self.mod = mods.get_wandb_mod("test-project")

    def read(self):
        nodes = {}
        for run_id, run in read_wandb(self.folder).items():
            group_run_id, node_id = run_id.rsplit("_", 1)
            assert run["group"] == f"Run ID: {group_run_id}" == f"Run ID: {RUN_ID}"
            assert run["name"] == f"Node ID: {node_id}" and run["project"] == "test-project"
            nodes[int(node_id)] = dict(run["history"])
        return nodes


@pytest.fixture(params=[TensorBoard, Wandb], ids=["tensorboard", "wandb"])
def backend(request, tmp_path):
    return request.param(tmp_path)


def test_get_parameters_passes_through_untouched(backend, tmp_path):
    msg = message(MessageTypeLegacy.GET_PARAMETERS, 7, 0)
    reply = send(make_app(backend.mod), msg)
    bare_reply = send(make_app(None), msg)
    assert reply.content.parameters_records == bare_reply.content.parameters_records
    assert not mods._open_logs and not (tmp_path / "tb").exists() and not (tmp_path / "wandb").exists()


def test_three_rounds_of_train_and_evaluate_log_exact_values_at_exact_rounds(backend):
    run_rounds(make_app(backend.mod), [7], range(1, 4))
    mods._close_all()
    rows = backend.read()[7]
    assert sorted(rows) == [1, 2, 3]
    for server_round, row in rows.items():
        for tag, value in expected_values(7, server_round).items():
            assert row[tag] == pytest.approx(value), (server_round, tag)
        assert row["train/fit_time"] > 0 and row["eval/eval_time"] > 0
        weights_bytes = sum(array.nbytes for array in WEIGHTS)
        assert row["train/bytes_received"] > weights_bytes and row["train/bytes_sent"] > weights_bytes
        assert row["eval/bytes_received"] > weights_bytes and 0 < row["eval/bytes_sent"] < weights_bytes


def test_two_nodes_interleaved_in_one_process_each_log_only_their_own_values(backend):
    run_rounds(make_app(backend.mod), [7, -8], range(1, 4))
    mods._close_all()
    nodes = backend.read()
    assert sorted(nodes) == [-8, 7]
    for node_id, rows in nodes.items():
        assert sorted(rows) == [1, 2, 3]
        for server_round, row in rows.items():
            assert row["train/loss"] == pytest.approx(node_id + server_round / 10)


def test_a_node_that_sits_out_a_round_still_lines_up_with_the_server_round(backend):
    run_rounds(make_app(backend.mod), [7], [1, 3])
    mods._close_all()
    assert sorted(backend.read()[7]) == [1, 3]


def test_metrics_that_are_not_finite_numbers_are_skipped_with_one_warning_per_key(backend, warnings):
    extra = {"note": "hello", "blob": b"\x00", "diverged": math.nan, "good": 0.5, "converged": True}
    run_rounds(make_app(backend.mod, extra_metrics=extra), [7], range(1, 4))
    mods._close_all()
    rows = backend.read()[7]
    for row in rows.values():
        assert row["train/good"] == 0.5 and row["train/converged"] == 1.0  # a bool logs as 0 or 1
        assert not {"train/note", "train/blob", "train/diverged"} & set(row)
    messages = [record.getMessage() for record in warnings]
    for key in ("train/note", "train/blob", "train/diverged"):
        assert sum(key in message for message in messages) == 1, messages


def test_an_unwritable_logdir_leaves_the_reply_unchanged_with_one_warning(tmp_path, warnings):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the logdir's parent folder should be")
    app = make_app(mods.get_tensorboard_mod(str(blocker / "logs")))
    for server_round in (1, 2):
        msg = message(MessageType.TRAIN, 7, server_round)
        reply, bare_reply = send(app, msg), send(make_app(None), msg)
        assert reply.content.configs_records == bare_reply.content.configs_records
        assert reply.content.parameters_records == bare_reply.content.parameters_records
    assert len(warnings) == 1 and "tensorboard logging failed" in warnings[0].getMessage()


@pytest.fixture
def wandb_online_without_a_key(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def assert_falls_back_to_offline_with_one_warning(tmp_path, warnings):
    app = make_app(mods.get_wandb_mod("test-project"))
    started = time.monotonic()
    run_rounds(app, [7], [1, 2])
    assert time.monotonic() - started < 10
    [warning] = warnings
    assert "logged offline" in warning.getMessage() and "wandb sync" in warning.getMessage()
    history = Wandb(tmp_path).read()[7]
    assert [history[step]["train/loss"] for step in (1, 2)] == [7.1, 7.2]
    return warning.getMessage()


def test_wandb_asked_to_go_online_without_a_key_logs_offline_with_one_warning(
    tmp_path, wandb_online_without_a_key, warnings
):
    assert "no W&B API key" in assert_falls_back_to_offline_with_one_warning(tmp_path, warnings)


def test_wandb_with_a_key_but_no_route_to_its_host_logs_offline_within_seconds(
    tmp_path, wandb_online_without_a_key, monkeypatch, warnings
):
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{launch.free_port()}")  # nothing listens
    assert "can't reach 127.0.0.1" in assert_falls_back_to_offline_with_one_warning(tmp_path, warnings)


def test_an_error_reply_passes_through_untouched(backend):
    def error_mod(msg, context, call_next):
        return msg.create_error_reply(Error(code=0, reason="an earlier mod refused"))

    app = ClientApp(client_fn=lambda context: None, mods=[backend.mod, error_mod])
    reply = send(app, message(MessageType.TRAIN, 7, 1))
    assert reply.has_error() and reply.error.reason == "an earlier mod refused"
    assert not mods._open_logs


def test_an_exception_in_the_training_code_propagates_unchanged(backend):
    with pytest.raises(RuntimeError, match="training broke"):
        send(make_app(backend.mod, fail=True), message(MessageType.TRAIN, 7, 1))


def test_one_writer_per_node_survives_a_module_reload_and_a_pickled_copy_of_the_mod(backend):
    run_rounds(make_app(backend.mod), [7], [1])
    importlib.reload(mods)  # what flower-client-app does before every message
    copied_mod = cloudpickle.loads(cloudpickle.dumps(backend.mod))  # what flower-simulation does
    run_rounds(make_app(copied_mod), [7], [2])
    mods._close_all()
    assert sorted(backend.read()[7]) == [1, 2]  # TensorBoard: read() asserts one event file


def test_a_second_flower_run_in_the_same_process_gets_its_own_logs(tmp_path):
    mod = mods.get_tensorboard_mod(str(tmp_path / "tb"))
    for run_id in (1, 2):
        send(make_app(mod), message(MessageType.TRAIN, 7, 1, run_id=run_id))
    assert [key[-2] for key in mods._open_logs] == [2]  # the first run's writer is closed
    for run_id in (1, 2):
        [event_file] = (tmp_path / "tb" / str(run_id) / "7").iterdir()
        assert read_tensorboard(event_file)["train/loss"] == {1: pytest.approx(7.1)}


def test_two_hundred_rounds_do_not_grow_open_files_or_threads(backend):
    app = make_app(backend.mod)
    run_rounds(app, [7], range(1, 11))
    files, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    run_rounds(app, [7], range(11, 201))
    assert len(os.listdir("/proc/self/fd")) <= files
    assert threading.active_count() <= threads
