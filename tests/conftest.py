"""Shared fixtures: a small CIFAR-10 look-alike in the hub's parquet layout."""

import io
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_DIR))
# The flower-*, tensorboard and launcher commands the tests start: this environment's.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar_like(folder: Path, num_train: int, num_test: int, image_format: str = "JPEG") -> Path:
    """Write `plain_text/{train,test}-00000-of-00001.parquet` as the hub serves CIFAR-10.

    Each class is a colour plus noise, so a model can learn it in a few steps.
    """
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(len(CLASS_NAMES), 3))
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)}
    )
    for split, size in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, len(CLASS_NAMES), size=size)
        images = []
        for label in labels:
            pixels = np.clip(colours[label] + rng.normal(0, 40, size=(32, 32, 3)), 0, 255)
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buffer, format=image_format)
            images.append({"bytes": buffer.getvalue(), "path": None})
        table = datasets.Dataset.from_dict({"img": images, "label": labels.tolist()}, features=features)
        path = folder / "plain_text" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(path))
    return folder


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400-image training split and a 100-image test split."""
    return write_cifar_like(tmp_path_factory.mktemp("cifar_like"), num_train=400, num_test=100)
