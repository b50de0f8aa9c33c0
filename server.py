"""The ServerApp: FedAvg from a fresh model, with the global model tested centrally each round."""

from logging import INFO
from typing import Dict, List, Optional, Tuple

import numpy as np
from flwr.common import Context, Metrics, Scalar, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from config import load_settings
from task import Net, get_weights, load_test_data, set_weights, test


def weighted_average(metrics: List[Tuple[int, Metrics]]) -> Metrics:
    """Average each client metric, weighted by the client's number of examples."""
    total = sum(num_examples for num_examples, _ in metrics)
    names = {name for _, client_metrics in metrics for name in client_metrics}
    return {
        name: sum(n * float(m[name]) for n, m in metrics if name in m) / total for name in names
    }


def server_fn(context: Context) -> ServerAppComponents:
    settings = load_settings(context.run_config)
    fit_config = {
        key: settings[key] for key in ("local-epochs", "batch-size", "learning-rate", "momentum")
    }

    def evaluate(
        server_round: int, parameters: List[np.ndarray], config: Dict[str, Scalar]
    ) -> Optional[Tuple[float, Dict[str, Scalar]]]:
        net = Net()
        set_weights(net, parameters)
        loss, accuracy = test(net, load_test_data(settings["dataset"]))
        log(INFO, "Round %s: global model on the test split: loss %.4f, accuracy %.4f",
            server_round, loss, accuracy)
        return loss, {"accuracy": accuracy}

    strategy = FedAvg(
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
    return ServerAppComponents(
        strategy=strategy, config=ServerConfig(num_rounds=settings["num-server-rounds"])
    )


app = ServerApp(server_fn=server_fn)
