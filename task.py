"""The model, the data and the training loop: what a client runs and a server evaluates."""

from collections import OrderedDict
from io import BytesIO
from typing import Dict, List, Tuple, Union

import datasets
import numpy as np
import simplejpeg
import torch
import torch.nn.functional as F
from flwr_datasets import FederatedDataset
from flwr_datasets.partitioner import IidPartitioner
from PIL import Image
from torch import nn

from config import ConfigError

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VALIDATION_FRACTION = 0.2
SPLIT_SEED = 42

# Images decoded to a uint8 tensor (N, 3, 32, 32) and their labels (N,).
ImageData = Tuple[torch.Tensor, torch.Tensor]


class Net(nn.Module):
    """The small CNN of PyTorch's 60-minute blitz, for 32x32 RGB images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def get_weights(net: nn.Module) -> List[np.ndarray]:
    return [value.cpu().numpy() for value in net.state_dict().values()]


def set_weights(net: nn.Module, weights: List[np.ndarray]) -> None:
    state_dict = OrderedDict(
        (name, torch.from_numpy(np.copy(array)))
        for name, array in zip(net.state_dict().keys(), weights)
    )
    net.load_state_dict(state_dict, strict=True)


# flower-client-app re-imports this module before every message (importlib.reload
# runs it again in the same namespace): keep what earlier messages already decoded.
_decoded: Dict[tuple, tuple] = globals().get("_decoded", {})


def load_data(
    dataset: str, partition_id: int, num_partitions: int
) -> Tuple[ImageData, ImageData]:
    """Return (train, validation) of one IID partition of the training split.

    `dataset` is a Hugging Face hub id or a local folder in the hub's parquet layout.
    Decoding happens once per process; later calls return the same tensors.
    """
    key = (dataset, partition_id, num_partitions)
    if key not in _decoded:
        images, labels = decode(_load(dataset, num_partitions, partition_id))
        # The 80/20 split, on the decoded tensors: cheaper than splitting the dataset first.
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
        num_val = int(len(labels) * VALIDATION_FRACTION)
        val, train = order[:num_val], order[num_val:]
        _decoded[key] = ((images[train], labels[train]), (images[val], labels[val]))
    return _decoded[key]


def load_test_data(dataset: str) -> ImageData:
    """Return the whole test split, for the server's centralized evaluation."""
    key = (dataset, "test")
    if key not in _decoded:
        _decoded[key] = decode(_load(dataset, 1, "test"))
    return _decoded[key]


def _load(dataset: str, num_partitions: int, part: Union[int, str]) -> datasets.Dataset:
    """Partition `part` of the training split (an int) or the split named `part`."""
    federated = FederatedDataset(dataset=dataset, partitioners={"train": IidPartitioner(num_partitions)})
    try:
        split = federated.load_partition(part) if isinstance(part, int) else federated.load_split(part)
    except ConnectionError as error:
        raise ConnectionError(
            f"Could not load dataset {dataset!r}: {error}. Without access to the Hugging "
            "Face hub, point the app at a local copy in the hub's parquet layout, e.g. "
            "RUN_CONFIG='dataset=\"/path/to/cifar10\"' (see the README)."
        ) from None
    if not {"img", "label"} <= set(split.column_names):
        raise ConfigError(
            f"setting 'dataset': {dataset!r} has columns {split.column_names}; "
            "the app needs 'img' (encoded images) and 'label'"
        )
    return split


def decode(split: datasets.Dataset) -> ImageData:
    """Decode a split's encoded `img` bytes into one uint8 tensor, with its labels."""
    table = split.cast_column("img", datasets.Image(decode=False)).with_format("arrow")[:]
    encoded = table.column("img").combine_chunks().field("bytes").to_pylist()
    images = np.stack([_decode_image(data) for data in encoded])
    labels = table.column("label").to_numpy()
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def _decode_image(data: bytes) -> np.ndarray:
    # libjpeg-turbo decodes JPEG about 6x faster than PIL; PIL handles the rest (PNG).
    if data[:2] == b"\xff\xd8":
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    return np.asarray(Image.open(BytesIO(data)).convert("RGB"))


def _normalize(images: torch.Tensor) -> torch.Tensor:
    """Map a uint8 batch to floats in [-1, 1] on the training device."""
    return images.to(DEVICE, non_blocking=True).float().div_(127.5).sub_(1.0)


def train(
    net: nn.Module,
    data: ImageData,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
) -> Dict[str, float]:
    """Train with SGD; return the loss and accuracy measured during the last epoch."""
    images, labels = data
    net.to(DEVICE).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=learning_rate, momentum=momentum)
    for _ in range(epochs):
        total_loss, correct = 0.0, 0
        for batch in torch.randperm(len(labels)).split(batch_size):
            batch_labels = labels[batch].to(DEVICE)
            optimizer.zero_grad()
            outputs = net(_normalize(images[batch]))
            loss = F.cross_entropy(outputs, batch_labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            correct += (outputs.argmax(1) == batch_labels).sum().item()
    return {"loss": total_loss / len(labels), "accuracy": correct / len(labels)}


@torch.no_grad()
def test(net: nn.Module, data: ImageData, batch_size: int = 512) -> Tuple[float, float]:
    """Return (loss, accuracy) of the model on the data."""
    images, labels = data
    net.to(DEVICE).eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        batch_labels = labels[start : start + batch_size].to(DEVICE)
        outputs = net(_normalize(images[start : start + batch_size]))
        total_loss += F.cross_entropy(outputs, batch_labels, reduction="sum").item()
        correct += (outputs.argmax(1) == batch_labels).sum().item()
    return total_loss / len(labels), correct / len(labels)
