"""Small real model directories for tests and benchmarks, in the layout the training jobs write.

``write_cnn_model_dir`` / ``write_xgboost_model_dir`` produce exactly what SM_MODEL_DIR holds after training
(weights, model_config.json, code/), and ``package_model`` turns such a folder into model.tar.gz. The
``quick_*`` trainers fit on a few thousand shipped MNIST images in seconds, so end-to-end tests can check
that the right class comes back, not just that something does.
"""

from __future__ import annotations

import functools
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from inference.packaging import copy_code

MNIST_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
NORMALIZATION = {"scale": 1 / 255, "mean": MNIST_MEAN, "std": MNIST_STD}
CLASS_NAMES = [str(i) for i in range(10)]


def load_mnist(split: str = "train", limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shipped MNIST images (N, 28, 28) uint8 and labels, first ``limit`` of them."""
    from training.datasets import read_idx

    prefix = "train" if split == "train" else "t10k"
    images = read_idx(MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
    if limit:
        images, labels = images[:limit], labels[:limit]
    return np.asarray(images, dtype=np.uint8), np.asarray(labels, dtype=np.int64)


def cnn_config(architecture: str = "compact", kernel_size: int = 3, width: int = 24, dropout: float = 0.05) -> dict:
    return {"framework": "pytorch", "architecture": architecture, "kernel_size": kernel_size, "width": width,
            "dropout": dropout, "num_classes": 10, "class_names": CLASS_NAMES, "image_shape": [28, 28],
            "normalization": NORMALIZATION}


def fit(net: Any, x: Any, y: Any, epochs: int, lr: float) -> dict:
    """A few epochs of Adam on in-memory tensors, batches of 32; the trained weights (the net left in eval)."""
    import torch

    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 32):
            idx = order[start: start + 32]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            optimizer.step()
    net.eval()
    return net.state_dict()


def quick_train_cnn(samples: int = 4000, epochs: int = 2, seed: int = 0, **arch: Any) -> tuple[Any, dict]:
    """A compact CNN fitted on ``samples`` MNIST images (about 95% accurate); returns (state_dict, config)."""
    import torch

    from training.models import build_model

    torch.manual_seed(seed)
    config = cnn_config(**arch)
    net = build_model(config["architecture"], 10, kernel_size=config["kernel_size"], width=config["width"],
                      dropout=config["dropout"])
    images, labels = load_mnist("train", samples)
    x = torch.from_numpy(((images / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(labels)
    return fit(net, x, y, epochs, lr=0.005), config


@functools.lru_cache(maxsize=2)
def trained_cnn(samples: int = 3000, epochs: int = 2) -> tuple[Any, dict]:
    """One quick CNN per process, shared by the tests that need a model that actually reads digits."""
    return quick_train_cnn(samples=samples, epochs=epochs)


def write_cnn_model_dir(dest: str | Path, state_dict: Any = None, config: dict | None = None) -> Path:
    """SM_MODEL_DIR of a CNN training job: model.pth + model_config.json + code/ (random weights if none)."""
    import torch

    from training.models import build_model

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = config or cnn_config()
    if state_dict is None:
        torch.manual_seed(0)
        shape = config.get("image_shape", [28, 28])
        state_dict = build_model(config["architecture"], config["num_classes"], kernel_size=config["kernel_size"],
                                 width=config["width"], dropout=config["dropout"],
                                 in_channels=int(config.get("in_channels", 1)), image_size=int(shape[-1])).state_dict()
    torch.save(state_dict, dest / "model.pth")
    (dest / "model_config.json").write_text(json.dumps(config, indent=2))
    copy_code(dest, "pytorch")
    return dest


@functools.lru_cache(maxsize=2)
def _fit_xgboost(samples: int, rounds: int) -> bytes:
    import xgboost

    images, labels = load_mnist("train", samples)
    features = ((images.reshape(len(images), -1) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    booster = xgboost.train({"objective": "multi:softprob", "num_class": 10, "max_depth": 4, "eta": 0.3,
                             "tree_method": "hist", "nthread": 1}, xgboost.DMatrix(features, label=labels), rounds)
    return bytes(booster.save_raw("json"))


def write_xgboost_model_dir(dest: str | Path, samples: int = 2000, rounds: int = 15) -> Path:
    """SM_MODEL_DIR of the XGBoost baseline, fitted on ``samples`` normalised, flattened MNIST images (~90%)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "xgboost-model.json").write_bytes(_fit_xgboost(samples, rounds))
    config = {"framework": "xgboost", "num_classes": 10, "class_names": CLASS_NAMES, "image_shape": [28, 28],
              "normalization": NORMALIZATION}
    (dest / "model_config.json").write_text(json.dumps(config, indent=2))
    copy_code(dest, "xgboost")
    return dest


def package_model(model_dir: str | Path, tar_path: str | Path) -> Path:
    """model.tar.gz with the folder's contents at the archive root, as SageMaker training writes it."""
    tar_path = Path(tar_path)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        for entry in sorted(Path(model_dir).iterdir()):
            tar.add(entry, arcname=entry.name)
    return tar_path


def digit_png(image: np.ndarray, size: int | None = None, invert: bool = False, rgb: bool = False) -> bytes:
    """Encode an MNIST image as PNG, optionally scaled up, inverted (dark on light) or in colour."""
    import io

    from PIL import Image

    picture = Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L")
    if size:
        picture = picture.resize((size, size), Image.Resampling.BILINEAR)
    if invert:
        picture = Image.eval(picture, lambda v: 255 - v)
    if rgb:
        picture = picture.convert("RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# -- a colour model (3x32x32, image-folder data) that really tells its classes apart ---------------------------------

COLOUR_CLASSES = ["blue", "green", "red"]  # sorted, as image-folder class names are


def colour_pictures(count: int, width: int = 32, height: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) uint8 pictures and labels: a noisy grey background with a rectangle of the class's colour
    (blue, green or red) at a random place and size."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(COLOUR_CLASSES)
    pictures = np.clip(rng.normal(90, 30, size=(count, height, width, 3)), 0, 255)
    for picture, label in zip(pictures, labels, strict=True):
        h, w = rng.integers(height // 3, height * 2 // 3 + 1), rng.integers(width // 3, width * 2 // 3 + 1)
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        colour = np.full(3, 30.0)
        colour[2 - label] = 230.0  # blue -> channel 2, green -> 1, red -> 0
        picture[top: top + h, left: left + w] = colour + rng.normal(0, 10, size=(h, w, 3))
    return np.clip(pictures, 0, 255).astype(np.uint8), labels.astype(np.int64)


@functools.lru_cache(maxsize=1)
def trained_colour_cnn(samples: int = 600, epochs: int = 3) -> tuple[Any, dict]:
    """A compact 3x32x32 CNN fitted in seconds on :func:`colour_pictures`; returns (state_dict, config) with the
    config an image-folder training job writes (data_format, in_channels, class names, normalization)."""
    import torch

    from training.models import build_model

    pictures, labels = colour_pictures(samples, seed=1)
    images = pictures.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    mean, std = float(images.mean()), float(images.std())
    config = {**cnn_config(width=8), "num_classes": 3, "class_names": COLOUR_CLASSES, "image_shape": [3, 32, 32],
              "in_channels": 3, "data_format": "image-folder",
              "normalization": {"scale": 1 / 255, "mean": mean, "std": std}}
    torch.manual_seed(0)
    net = build_model("compact", 3, kernel_size=3, width=8, dropout=0.05, in_channels=3, image_size=32)
    x, y = torch.from_numpy((images - mean) / std), torch.from_numpy(labels)
    return fit(net, x, y, epochs, lr=0.01), config


def picture_png(picture: np.ndarray, mode: str = "RGB") -> bytes:
    """Encode an (H, W, 3) uint8 picture as PNG, converted to ``mode`` (RGB, RGBA, L, P)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()
