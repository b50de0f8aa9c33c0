"""The ClientApps: a NumPyClient on one partition of CIFAR-10, with a monitoring mod."""

from typing import Dict, List, Tuple

import numpy as np
import torch
from flwr.client import Client, ClientApp, NumPyClient
from flwr.common import Context
from flwr.common.typing import Scalar

from config import load_partition, load_settings
from mods import get_tensorboard_mod, get_wandb_mod
from task import ImageData, Net, get_weights, load_data, set_weights, test, train


class FlowerClient(NumPyClient):
    """Trains the global model on this node's data and evaluates it on its validation set."""

    def __init__(self, train_data: ImageData, val_data: ImageData) -> None:
        self.net = Net()
        self.train_data = train_data
        self.val_data = val_data

    def fit(
        self, parameters: List[np.ndarray], config: Dict[str, Scalar]
    ) -> Tuple[List[np.ndarray], int, Dict[str, Scalar]]:
        set_weights(self.net, parameters)
        metrics = train(
            self.net,
            self.train_data,
            epochs=int(config["local-epochs"]),
            batch_size=int(config["batch-size"]),
            learning_rate=float(config["learning-rate"]),
            momentum=float(config["momentum"]),
        )
        return get_weights(self.net), len(self.train_data[1]), metrics

    def evaluate(
        self, parameters: List[np.ndarray], config: Dict[str, Scalar]
    ) -> Tuple[float, int, Dict[str, Scalar]]:
        set_weights(self.net, parameters)
        loss, accuracy = test(self.net, self.val_data)
        return loss, len(self.val_data[1]), {"accuracy": accuracy}


def client_fn(context: Context) -> Client:
    """Build the client of one node: its partition comes from the node config."""
    settings = load_settings(context.run_config)
    torch.set_num_threads(settings["torch-threads"])
    partition_id, num_partitions = load_partition(context.node_config)
    train_data, val_data = load_data(settings["dataset"], partition_id, num_partitions)
    return FlowerClient(train_data, val_data).to_client()


SETTINGS = load_settings()

wandb_app = ClientApp(client_fn=client_fn, mods=[get_wandb_mod(SETTINGS["wandb-project"])])
tb_app = ClientApp(client_fn=client_fn, mods=[get_tensorboard_mod(SETTINGS["logdir"])])
