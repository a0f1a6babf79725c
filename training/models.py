"""CNN architectures selectable by the ``architecture`` hyperparameter.

- ``compact``: the MNIST PyTorch reference design (under 20K parameters, BatchNorm, Dropout 0.05,
  global average pooling; 16.4K parameters at the default width 24); cheap enough to train well on a
  2-core CPU.
- ``keras``: the classic Keras example (conv32-pool-conv64-pool-conv64, dense 64, dropout 0.5).
- ``dense``: the dense baseline, Flatten then two Dense layers of ``8 * width`` units (192 at train_cnn's
  default width 24, so one ``width`` scales every architecture); no convolution, ``kernel_size`` does not apply.

``model_config.json`` beside the weights records what :func:`build_model` needs to rebuild the
network, so inference never unpickles anything.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

ARCHITECTURES = ("compact", "keras", "dense")


def _shrinking_padding(kernel_size: int) -> int:
    """Padding that makes every kernel size shrink the map by 2 pixels, as a valid 3x3 does.

    So ``kernel_size`` changes the receptive field, not the layout: 5 and 7 fit 28x28 inputs too.
    """
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd number >= 3, got {kernel_size}")
    return (kernel_size - 3) // 2


def _conv_bn(in_ch: int, out_ch: int, kernel: int, padding: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=padding, bias=False),
                               nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class CompactNet(nn.Module):
    """Valid convolutions shrink the map early (less compute); a 1x1 transition keeps parameters low."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, kernel_size: int = 3, width: int = 24,
                 dropout: float = 0.05, image_size: int = 28) -> None:
        super().__init__()
        k = kernel_size
        shrink = _shrinking_padding(k)
        half = max(width // 2, 4)
        # Dropout only after the first pooling: on the full-resolution maps its random numbers cost more than
        # the convolutions on a CPU (21.7 ms vs 1.1 ms per call on a 128x16x24x24 batch, measured).
        self.features = nn.Sequential(
            _conv_bn(in_channels, half, k, shrink, 0.0),
            _conv_bn(half, width, k, shrink, 0.0),
            nn.MaxPool2d(2),
            _conv_bn(width, half, 1, 0, dropout),
            _conv_bn(half, width, k, shrink, dropout),
            _conv_bn(width, width, k, shrink, dropout),
            _conv_bn(width, width, k, k // 2, dropout),
        )
        with torch.no_grad():
            out = self.features(torch.zeros(1, in_channels, image_size, image_size))
        if out.shape[-1] < 1:
            raise ValueError(f"kernel_size={k} is too large for {image_size}x{image_size} images")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class KerasNet(nn.Module):
    """conv32-pool-conv64-pool-conv64, dense 64, dropout 0.5 (the TensorFlow MNIST reference)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, kernel_size: int = 3, width: int = 32,
                 dropout: float = 0.5, image_size: int = 28) -> None:
        super().__init__()
        k, pad = kernel_size, _shrinking_padding(kernel_size)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, k, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, k, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, k, padding=pad), nn.ReLU(inplace=True),
        )
        try:
            with torch.no_grad():
                flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).numel()
        except RuntimeError:  # a map shrank below the kernel
            flat = 0
        if flat < 1:
            raise ValueError(f"kernel_size={k} is too large for {image_size}x{image_size} images")
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class DenseNet(nn.Module):
    """Flatten -> Dense(8*width) -> ReLU -> Dropout -> Dense(8*width) -> ReLU -> Dense(classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, kernel_size: int = 3, width: int = 24,
                 dropout: float = 0.2, image_size: int = 28) -> None:
        super().__init__()
        del kernel_size  # no convolutions
        width *= 8
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(in_channels * image_size * image_size, width), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def build_model(architecture: str, num_classes: int, kernel_size: int = 3, width: int | None = None,
                dropout: float | None = None, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    """Build a network by name; unknown names raise with the list of valid ones."""
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_channels": in_channels,
                              "kernel_size": kernel_size, "image_size": image_size}
    if width is not None:
        kwargs["width"] = width
    if dropout is not None:
        kwargs["dropout"] = dropout
    if architecture == "compact":
        return CompactNet(**kwargs)
    if architecture == "keras":
        return KerasNet(**kwargs)
    if architecture == "dense":
        return DenseNet(**kwargs)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
