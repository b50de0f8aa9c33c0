"""The model, the data pipeline and the training loop."""

import io
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

import task
from config import ConfigError
from conftest import PROJECT_DIR
from task import Net, get_weights, load_data, set_weights, train


def test_the_model_maps_a_batch_of_images_to_ten_logits():
    assert Net()(torch.zeros(4, 3, 32, 32)).shape == (4, 10)


def test_weights_round_trip_through_numpy():
    source, target = Net(), Net()
    set_weights(target, get_weights(source))
    for a, b in zip(get_weights(source), get_weights(target)):
        np.testing.assert_array_equal(a, b)


def test_a_partition_is_decoded_to_uint8_images_with_an_80_20_split(dataset_dir):
    (train_images, train_labels), (val_images, val_labels) = load_data(str(dataset_dir), 0, 2)
    assert train_images.dtype == torch.uint8 and train_images.shape == (160, 3, 32, 32)
    assert val_images.shape == (40, 3, 32, 32)
    assert train_labels.shape == (160,) and val_labels.shape == (40,)


def test_partitions_are_disjoint_and_cover_the_training_split(dataset_dir):
    def images_of(partition_id, num_partitions):
        (train_images, _), (val_images, _) = load_data(str(dataset_dir), partition_id, num_partitions)
        return {bytes(image.numpy()) for image in torch.cat([train_images, val_images])}

    whole = images_of(0, 1)
    parts = [images_of(i, 3) for i in range(3)]
    assert sum(len(part) for part in parts) == len(whole) == 400
    assert set().union(*parts) == whole
    assert all(a.isdisjoint(b) for i, a in enumerate(parts) for b in parts[i + 1 :])


def encode(pixels, image_format):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format)
    return buffer.getvalue()


def test_png_images_decode_to_their_exact_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(task._decode_image(encode(pixels, "PNG")), pixels)


def test_jpeg_images_decode_to_the_pixels_pil_gives():
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    jpeg = encode(pixels, "JPEG")
    by_pil = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    assert np.abs(task._decode_image(jpeg).astype(int) - by_pil).max() <= 2


def test_a_few_training_steps_lower_the_loss(dataset_dir):
    torch.manual_seed(0)
    train_data, _ = load_data(str(dataset_dir), 0, 1)
    net = Net()
    loss_before, _ = task.test(net, train_data)
    metrics = train(net, train_data, epochs=3, batch_size=32, learning_rate=0.01, momentum=0.9)
    loss_after, _ = task.test(net, train_data)
    assert loss_after < loss_before
    assert set(metrics) == {"loss", "accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0


def test_data_is_decoded_once_per_process_even_across_module_reloads(dataset_dir):
    import importlib

    first = load_data(str(dataset_dir), 1, 2)
    importlib.reload(task)
    assert task.load_data(str(dataset_dir), 1, 2)[0][0] is first[0][0]


def test_an_unreachable_hub_stops_with_advice_to_use_a_local_copy():
    code = "import task; task.load_data('uoft-cs/cifar10', 0, 2)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no hub, without waiting for time-outs
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "uoft-cs/cifar10" in result.stderr and "point the app at a local copy" in result.stderr


def test_a_dataset_without_img_and_label_columns_is_an_error_naming_it(tmp_path):
    path = tmp_path / "plain_text" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    datasets.Dataset.from_dict({"image": [b"x"] * 4, "y": [0, 1, 0, 1]}).to_parquet(str(path))
    with pytest.raises(ConfigError) as error:
        load_data(str(tmp_path), 0, 1)
    assert "has columns ['image', 'y']" in str(error.value) and str(tmp_path) in str(error.value)
