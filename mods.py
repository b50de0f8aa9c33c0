"""Flower Mods that log each client's training to Weights & Biases or TensorBoard.

A mod sees every message going into the ClientApp and every reply coming out. These
two time the train and evaluate work and log, per node and at x = the server round:

    train/<metric>, train/fit_time, train/bytes_received, train/bytes_sent
    eval/loss, eval/<metric>, eval/eval_time, eval/bytes_received, eval/bytes_sent

Other messages (get_parameters, get_properties, ...) and error replies pass through
untouched. Monitoring never gets in the way of training: if logging fails, the reply
still goes back unchanged and one warning is logged.

Where state lives, and why: `flower-client-app` re-imports this module before every
message and `flower-simulation` sends a pickled copy of the mod with every message.
So a mod carries only its settings (`functools.partial` of a module-level function
pickles them by value and the function by name), and the open writers and runs sit in
a per-process registry that survives re-imports.
"""

import atexit
import math
import netrc
import os
import socket
import time
from functools import partial
from logging import INFO, WARNING
from typing import Callable, Dict, Hashable, Optional, Protocol, Tuple, Union
from urllib.parse import ParseResult, urlparse

import wandb
from flwr.client.typing import ClientAppCallable, Mod
from flwr.common import Context, Message, RecordSet
from flwr.common.constant import MessageType
from flwr.common.logger import log
from torch.utils.tensorboard import SummaryWriter

# W&B's defaults add system statistics, machine metadata and a requirements capture
# to every run; as each round finishes and resumes the run (see WandbLog), they cost
# about 0.2 s a round. Switch them back on here if you want them.
WANDB_SETTINGS = dict(
    x_disable_stats=True,
    x_disable_meta=True,
    x_disable_machine_info=True,
    x_save_requirements=False,
    save_code=False,
    console="off",
    silent=True,
)


class NodeLog(Protocol):
    """What one node's log, in one backend, for one Flower run, can do."""

    def log(self, values: Dict[str, float], server_round: int, end_of_round: bool) -> None:
        ...

    def close(self) -> None:
        ...


def get_tensorboard_mod(logdir: str) -> Mod:
    """Return a mod that logs to TensorBoard under `<logdir>/<run_id>/<node_id>/`."""
    # Resolved here, where the user started the command: Flower may run the mod
    # elsewhere (flower-simulation's actors work in a copy of the project).
    return partial(_tensorboard_mod, logdir=os.path.abspath(logdir))


def get_wandb_mod(name: str) -> Mod:
    """Return a mod that logs to the W&B project `name`, one W&B run per node.

    Runs go online when W&B credentials are configured, else offline to
    `$WANDB_DIR/wandb/` (default `./wandb/`), to upload later with `wandb sync`.
    WANDB_MODE, when set, decides. A node that can't go online (no API key, W&B's
    host unreachable) logs offline instead, with one warning.
    """
    directory, mode = wandb_location()
    return partial(_wandb_mod, project=name, directory=directory, mode=mode)


def wandb_location() -> Tuple[str, str]:
    """Return W&B's (absolute folder, mode), and say once where offline runs go."""
    mode = os.environ.get("WANDB_MODE") or ("online" if _has_wandb_credentials() else "offline")
    directory = os.path.abspath(os.environ.get("WANDB_DIR", "."))
    if mode == "offline":
        _log_once(
            ("wandb offline", directory),
            INFO,
            f"W&B runs are logged offline under {os.path.join(directory, 'wandb')}; "
            "upload them with `wandb sync`.",
        )
    return directory, mode


def _tensorboard_mod(
    msg: Message, context: Context, call_next: ClientAppCallable, logdir: str
) -> Message:
    return _monitor(msg, context, call_next, ("tensorboard", logdir), partial(TensorBoardLog, logdir))


def _wandb_mod(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    project: str,
    directory: str,
    mode: str,
) -> Message:
    backend = ("wandb", project, directory, mode)
    return _monitor(msg, context, call_next, backend, partial(WandbLog, project, directory, mode))


# The per-process registry. flower-client-app re-imports this module before every
# message (importlib.reload runs it again in the same namespace): keep what is open.
if "_open_logs" not in globals():
    _open_logs: Dict[tuple, Optional[NodeLog]] = {}  # None: switched off after a failure
    _warned: set = set()

    @atexit.register
    def _close_all() -> None:
        for node_log in _open_logs.values():
            if node_log is not None:
                node_log.close()


def _monitor(
    msg: Message,
    context: Context,
    call_next: ClientAppCallable,
    backend: tuple,
    open_log: Callable[[int, int], NodeLog],
) -> Message:
    """Run the ClientApp on `msg` and log what its reply says, if it says anything."""
    message_type = msg.metadata.message_type
    if message_type not in (MessageType.TRAIN, MessageType.EVALUATE) or not msg.metadata.group_id:
        return call_next(msg, context)

    start = time.perf_counter()
    reply = call_next(msg, context)  # a training error propagates unchanged
    elapsed = time.perf_counter() - start
    if reply.has_error() or not reply.has_content():
        return reply

    run_id, node_id = msg.metadata.run_id, msg.metadata.dst_node_id
    key = (*backend, run_id, node_id)
    try:
        if key not in _open_logs:
            _close_other_runs(run_id)
            _open_logs[key] = open_log(run_id, node_id)
        node_log = _open_logs[key]
        if node_log is not None:
            values = _values(message_type, msg.content, reply.content, elapsed)
            is_evaluate = message_type == MessageType.EVALUATE
            node_log.log(values, int(msg.metadata.group_id), end_of_round=is_evaluate)
    except Exception as error:  # pylint: disable=broad-except
        _open_logs[key] = None
        _log_once(
            ("failed", key),
            WARNING,
            f"{backend[0]} logging failed for node {node_id} and is off for it from now "
            f"on; training goes on. Cause: {type(error).__name__}: {error}",
        )
    return reply


def _values(
    message_type: str, received: RecordSet, sent: RecordSet, elapsed: float
) -> Dict[str, float]:
    """Name and collect what a train or evaluate reply reports, plus timing and sizes."""
    if message_type == MessageType.TRAIN:
        prefix, timer = "train", "fit_time"
        reported = dict(sent.configs_records.get("fitres.metrics", {}))
    else:
        prefix, timer = "eval", "eval_time"
        reported = dict(sent.configs_records.get("evaluateres.metrics", {}))
        reported["loss"] = sent.metrics_records["evaluateres.loss"]["loss"]
    values = {}
    for name, value in reported.items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            values[f"{prefix}/{name}"] = float(value)  # a bool becomes 0.0 or 1.0
        else:
            _log_once(
                ("not a number", prefix, name),
                WARNING,
                f"metric {prefix}/{name} = {value!r} is not a finite number: not logged.",
            )
    values[f"{prefix}/{timer}"] = elapsed
    values[f"{prefix}/bytes_received"] = float(_size_in_bytes(received))
    values[f"{prefix}/bytes_sent"] = float(_size_in_bytes(sent))
    return values


def _size_in_bytes(content: RecordSet) -> int:
    """Bytes of a message's payload, counted as Flower's own message_size_mod does."""
    records = (
        *content.parameters_records.values(),
        *content.configs_records.values(),
        *content.metrics_records.values(),
    )
    return sum(record.count_bytes() for record in records)


class TensorBoardLog:
    """One SummaryWriter, `<logdir>/<run_id>/<name>/`, flushed after every message.

    `name` is a node id, or "server" for the ServerApp's global view.
    """

    def __init__(self, logdir: str, run_id: int, name: Union[int, str]) -> None:
        folder = os.path.join(logdir, str(run_id), str(name))
        os.makedirs(folder, exist_ok=True)  # its error names the folder; SummaryWriter's doesn't
        self.writer = SummaryWriter(folder)

    def log(self, values: Dict[str, float], server_round: int, end_of_round: bool) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, global_step=server_round)
        self.writer.flush()  # on disk now: a killed client keeps every round it sent

    def close(self) -> None:
        self.writer.close()


class WandbLog:
    """One W&B run per node, finished at the end of each of its rounds, resumed at the next.

    W&B offline writes a run's records to disk only when the run finishes, and
    flower-simulation ends its actors without exit handlers: finishing the run after
    each round's evaluate reply is what puts every round on disk. The step is the
    server round, so the resumed pieces read back as one increasing history.
    """

    def __init__(
        self, project: str, directory: str, mode: str, run_id: int, name: Union[int, str]
    ) -> None:
        """`name`: a node id, or "Server" for the ServerApp's global view."""
        self.init_args = dict(
            project=project,
            group=f"Run ID: {run_id}",
            name=f"Node ID: {name}" if isinstance(name, int) else name,
            id=f"{run_id}_{name}",
            # Offline, every piece is written on its own and `wandb sync` joins them.
            resume=None if mode == "offline" else "allow",
            dir=directory,
            mode=mode,
            reinit="create_new",  # one run per node, several nodes in one process
            settings=wandb.Settings(**WANDB_SETTINGS),
        )
        self.run: Optional[wandb.sdk.wandb_run.Run] = None

    def log(self, values: Dict[str, float], server_round: int, end_of_round: bool) -> None:
        if self.run is None:
            self.run = self._start()
        self.run.log(values, step=server_round)
        if end_of_round:
            self.close()

    def close(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish()

    def _start(self) -> "wandb.sdk.wandb_run.Run":
        """Start or resume the run; offline from now on if it can't go online."""
        if self.init_args["mode"] == "online":
            try:
                _check_wandb_reachable()
                return wandb.init(**self.init_args)
            except Exception as error:  # pylint: disable=broad-except
                log(WARNING, "W&B run %s can't go online, so it is logged offline under %s "
                    "from now on (upload it later with `wandb sync`). Cause: %s",
                    self.init_args["id"], os.path.join(self.init_args["dir"], "wandb"), error)
                self.init_args.update(mode="offline", resume=None)
        return wandb.init(**self.init_args)


def _close_other_runs(run_id: int) -> None:
    """Close the logs of earlier Flower runs: a SuperNode serves one run after another."""
    for key, node_log in list(_open_logs.items()):
        if key[-2] != run_id:
            if node_log is not None:
                node_log.close()
            del _open_logs[key]


def _log_once(key: Hashable, level: int, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log(level, message)


def _check_wandb_reachable(timeout: float = 5.0) -> None:
    """Raise unless there is an API key and W&B's host takes a connection.

    Without a key, wandb.init would ask for one at a terminal; with a key but no
    network, it retries for minutes. Either would hold up training.
    """
    if not _has_wandb_credentials():
        raise PermissionError("no W&B API key (set WANDB_API_KEY or run `wandb login`)")
    url = _wandb_url()
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"can't reach {url.hostname}:{port}: {error}") from None


def _wandb_url() -> ParseResult:
    """The W&B server the runs go to when online: WANDB_BASE_URL, or W&B's cloud."""
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))


def _has_wandb_credentials() -> bool:
    """True when an API key is in WANDB_API_KEY or in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = _wandb_url().hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
