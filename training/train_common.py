"""What both CNN training scripts share (train_cnn.py, PyTorch; train_keras.py, TensorFlow/Keras): the
hyperparameters and their checks, the per-epoch record, the stratified subset tuning trials train on, and the
learning-curve figure. Nothing here imports a deep-learning framework.
"""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from training.datasets import Split
from training.job_env import str2bool

LOG = logging.getLogger("train_common")

# training/models.py (PyTorch) builds all of these, training/keras_models.py all but resnet18 (PyTorch only: its
# pretrained weights are a torchvision state dict); a test keeps the lists in step.
ARCHITECTURES = ("compact", "keras", "dense", "resnet18")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("onecycle", "cosine", "none")
# auto: bfloat16 autocast where the CPU multiplies bfloat16 natively (AVX512-BF16/AMX), else float32; the
# weights, the optimizer and the saved model stay float32 either way (docs/decisions.md has the figures).
PRECISIONS = ("auto", "fp32", "bf16")
# A batch is at most 1/MIN_STEPS_PER_EPOCH of the training images (never under MIN_FITTED_BATCH): the tuner's
# batch sizes (128, 256) suit MNIST, but on a few thousand images they leave a handful of steps per epoch.
MIN_STEPS_PER_EPOCH = 50
MIN_FITTED_BATCH = 16


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    architecture: str = "compact"
    kernel_size: int = 3
    width: int = 32
    dropout: float = 0.05
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    scheduler: str = "onecycle"
    augment: bool = True
    rotation_degrees: float = 7.0
    cutout: int = 8
    cutout_prob: float = 0.3
    seed: int = 42
    train_fraction: float = 1.0
    max_train_seconds: float = 0.0
    num_threads: int = 0
    precision: str = "auto"

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.architecture in ARCHITECTURES, f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}"),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.kernel_size in (3, 5, 7), f"kernel-size must be 3, 5 or 7, got {self.kernel_size}"),
            (0.0 < self.train_fraction <= 1.0, f"train-fraction must be in (0, 1], got {self.train_fraction}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (0.0 <= self.cutout_prob <= 1.0, f"cutout-prob must be in [0, 1], got {self.cutout_prob}"),
        ]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ValueError("invalid hyperparameters: " + "; ".join(errors))


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    epoch_seconds: float
    elapsed_seconds: float
    extra: dict[str, float] = field(default_factory=dict)


def parse_args(argv: list[str] | None = None, description: str | None = None) -> tuple[TrainConfig, list[str]]:
    """The hyperparameters SageMaker passes as ``--name value`` arguments; unknown ones are returned, not errors."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        kind = str2bool if isinstance(value, bool) else type(value)
        parser.add_argument(flag, dest=name, type=kind, default=value)
    args, unknown = parser.parse_known_args(argv)
    config = TrainConfig(**vars(args))
    config.validate()
    return config, unknown


def fit_batch_size(config: TrainConfig, images: int) -> TrainConfig:
    """``config`` with a batch size small enough for MIN_STEPS_PER_EPOCH steps per epoch (unchanged if it is)."""
    fitted = max(MIN_FITTED_BATCH, images // MIN_STEPS_PER_EPOCH)
    if config.batch_size <= fitted:
        return config
    LOG.info("batch-size %d lowered to %d: %d training images give at least %d steps per epoch",
             config.batch_size, fitted, images, MIN_STEPS_PER_EPOCH)
    return replace(config, batch_size=fitted)


def stratified_fraction(split: Split, fraction: float, seed: int) -> Split:
    """Keep ``fraction`` of each class (tuning trials train on a subset)."""
    if fraction >= 1.0:
        return split
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(split.labels):
        idx = np.flatnonzero(split.labels == label)
        keep.append(rng.choice(idx, size=max(1, round(len(idx) * fraction)), replace=False))
    order = np.sort(np.concatenate(keep))
    return Split(split.images[order], split.labels[order])


def plot_learning_curves(history: list[EpochRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r.train_loss for r in history], marker="o", label="train loss")
    ax_loss.plot(epochs, [r.val_loss for r in history], marker="o", label="validation loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_acc.plot(epochs, [r.val_accuracy for r in history], marker="o", color="tab:green")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle("CNN learning curves")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
