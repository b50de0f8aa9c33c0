"""The ServerApp: FedAvg from a fresh model, with the global view of each round logged.

Each round the server logs, beside the clients' own logs, what only it sees: the
clients' metrics averaged (weighted by examples), how many clients returned results
and how many failed, and the global model's loss and accuracy on the test split.
"""

from logging import INFO, WARNING
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from flwr.common import Context, EvaluateRes, FitIns, FitRes, Metrics, Parameters, Scalar
from flwr.common import ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import ClientManager, Driver, ServerApp, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import start_driver
from flwr.server.strategy import FedAvg

from config import load_settings
from mods import NodeLog, TensorBoardLog, WandbLog, wandb_location
from task import Net, get_weights, load_test_data, set_weights, test

Failures = List[Union[Tuple[ClientProxy, FitRes], Tuple[ClientProxy, EvaluateRes], BaseException]]


def weighted_average(metrics: List[Tuple[int, Metrics]]) -> Metrics:
    """Average each numeric client metric, weighted by the client's number of examples."""
    total = sum(num_examples for num_examples, _ in metrics)
    names = {name for _, client_metrics in metrics for name, value in client_metrics.items()
             if isinstance(value, (int, float))}
    return {
        name: sum(n * float(m[name]) for n, m in metrics if name in m) / total for name in names
    }


class TrackedFedAvg(FedAvg):
    """FedAvg that logs each round's global view to the given logs, and goes on
    without the clients it loses after the first round."""

    def __init__(self, logs: List[NodeLog], **kwargs) -> None:
        super().__init__(**kwargs)
        self.logs = logs

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> List[Tuple[ClientProxy, FitIns]]:
        instructions = super().configure_fit(server_round, parameters, client_manager)
        # The minimums held the first round back until enough clients had joined. From
        # here on, rounds go ahead with the clients connected: a client lost mid-run
        # fails its round instead of stalling the run, and one that comes back is
        # sampled again from the next round.
        self.min_fit_clients = self.min_evaluate_clients = self.min_available_clients = 1
        return instructions

    def aggregate_fit(
        self, server_round: int, results: List[Tuple[ClientProxy, FitRes]], failures: Failures
    ) -> Tuple[Optional[Parameters], Dict[str, Scalar]]:
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        self._log("train", server_round, metrics, len(results), len(failures))
        return parameters, metrics

    def aggregate_evaluate(
        self, server_round: int, results: List[Tuple[ClientProxy, EvaluateRes]], failures: Failures
    ) -> Tuple[Optional[float], Dict[str, Scalar]]:
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)
        values = {**metrics, **({"loss": loss} if loss is not None else {})}
        # Federated evaluation is the last step of a round.
        self._log("eval", server_round, values, len(results), len(failures), end_of_round=True)
        return loss, metrics

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> Optional[Tuple[float, Dict[str, Scalar]]]:
        result = super().evaluate(server_round, parameters)
        if result is not None:
            loss, metrics = result
            self._log("central", server_round, {"loss": loss, **metrics})
        return result

    def _log(
        self,
        prefix: str,
        server_round: int,
        values: Dict[str, Scalar],
        returned: Optional[int] = None,
        failed: Optional[int] = None,
        end_of_round: bool = False,
    ) -> None:
        named = {f"{prefix}/{name}": float(value) for name, value in values.items()}
        if returned is not None:
            named.update({f"{prefix}/clients_returned": returned, f"{prefix}/clients_failed": failed})
        for server_log in list(self.logs):
            try:
                server_log.log(named, server_round, end_of_round)
            except Exception as error:  # pylint: disable=broad-except
                self.logs.remove(server_log)
                warn_logging_off(type(server_log).__name__, error)


def warn_logging_off(backend: str, error: Exception) -> None:
    log(WARNING, "Server logging to %s failed and is off from now on; training goes on. "
        "Cause: %s: %s", backend, type(error).__name__, error)


def open_server_logs(settings: Dict[str, Scalar], run_id: int) -> List[NodeLog]:
    """The server's logs, in the backends the `server-logging` setting names.

    A backend that fails to open is left out with a warning: training goes on.
    """
    def tensorboard() -> NodeLog:
        server_log = TensorBoardLog(str(settings["logdir"]), run_id, "server")
        log(INFO, "The server logs to TensorBoard in %s", server_log.writer.log_dir)
        return server_log

    def wandb() -> NodeLog:
        directory, mode = wandb_location()
        log(INFO, "The server logs to W&B project %r, run %s_Server", settings["wandb-project"], run_id)
        return WandbLog(str(settings["wandb-project"]), directory, mode, run_id, "Server")

    logs: List[NodeLog] = []
    for backend in filter(None, str(settings["server-logging"]).split(",")):
        try:
            logs.append({"tensorboard": tensorboard, "wandb": wandb}[backend]())
        except Exception as error:  # pylint: disable=broad-except
            warn_logging_off(backend, error)
    return logs


app = ServerApp()


@app.main()
def main(driver: Driver, context: Context) -> None:
    settings = load_settings(context.run_config)
    fit_config = {
        key: settings[key] for key in ("local-epochs", "batch-size", "learning-rate", "momentum")
    }

    def evaluate(
        server_round: int, parameters: List[np.ndarray], config: Dict[str, Scalar]
    ) -> Optional[Tuple[float, Dict[str, Scalar]]]:
        net = Net()
        set_weights(net, parameters)
        loss, accuracy = test(net, load_test_data(str(settings["dataset"])))
        log(INFO, "Round %s: global model on the test split: loss %.4f, accuracy %.4f",
            server_round, loss, accuracy)
        return loss, {"accuracy": accuracy}

    logs = open_server_logs(settings, driver.run.run_id)
    strategy = TrackedFedAvg(
        logs,
        fraction_fit=settings["fraction-fit"],
        fraction_evaluate=settings["fraction-evaluate"],
        min_fit_clients=settings["min-clients"],
        min_evaluate_clients=settings["min-clients"],
        min_available_clients=settings["min-clients"],
        # Start from a fresh model, rather than asking a client for its weights.
        initial_parameters=ndarrays_to_parameters(get_weights(Net())),
        on_fit_config_fn=lambda server_round: fit_config,
        evaluate_fn=evaluate,
        fit_metrics_aggregation_fn=weighted_average,
        evaluate_metrics_aggregation_fn=weighted_average,
    )
    try:
        start_driver(driver=driver, strategy=strategy,
                     config=ServerConfig(num_rounds=settings["num-server-rounds"]))
    finally:
        for server_log in logs:
            server_log.close()

