"""CNN architectures selectable by the ``architecture`` hyperparameter.

- ``compact``: the MNIST PyTorch reference design (under 20K parameters, BatchNorm, Dropout 0.05,
  global average pooling; 16.4K parameters at the default width 24); cheap enough to train well on a
  2-core CPU.
- ``keras``: the classic Keras example (conv32-pool-conv64-pool-conv64, dense 64, dropout 0.5).
- ``dense``: the dense baseline, Flatten then two Dense layers of ``8 * width`` units (192 at train_cnn's
  default width 24, so one ``width`` scales every architecture); no convolution, ``kernel_size`` does not apply.
- ``resnet18``: transfer learning. torchvision's ResNet18 (its state-dict keys, so a torchvision state dict
  loads with :func:`load_pretrained`) with a new ``fc`` for the classes; conv1/bn1/layer1..layer3 are frozen
  (their BatchNorms stay in eval mode while training) and only layer4 + fc train. The network takes the
  pipeline's normalised images, undoes that normalisation, repeats one channel to three and applies ImageNet's
  mean/std itself. ``kernel_size``, ``width`` and ``dropout`` do not apply.

``model_config.json`` beside the weights records what :func:`build_model` needs to rebuild the
network, so inference never unpickles anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

ARCHITECTURES = ("compact", "keras", "dense", "resnet18")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


class ResNet18(nn.Module):
    """torchvision's ResNet18 (weights=None) with a new ``fc``; the same state-dict keys as torchvision's.

    Inputs are the pipeline's normalised images ``(pixels * scale - mean) / std`` with 1 or 3 channels; the
    network turns them back into 0..1 intensities, repeats a single channel to RGB and normalises with
    ImageNet's mean/std (buffers that are not saved, so the state dict stays torchvision's). Everything up to
    layer3 is frozen and its BatchNorms keep their running statistics (eval mode) during training.
    """

    FROZEN = ("conv1", "bn1", "layer1", "layer2", "layer3")

    def __init__(self, num_classes: int = 10, in_channels: int = 1, kernel_size: int = 3, width: int | None = None,
                 dropout: float | None = None, image_size: int = 28,
                 normalization: Mapping[str, float] | None = None) -> None:
        super().__init__()
        del kernel_size, width, dropout  # torchvision's layout
        if in_channels not in (1, 3):
            raise ValueError(f"resnet18 takes 1 or 3 input channels, got {in_channels}")
        if image_size < 8:
            raise ValueError(f"resnet18 needs images of at least 8x8 pixels, got {image_size}x{image_size}")
        from torchvision.models import resnet18  # imported here: only this architecture needs torchvision

        base = resnet18(weights=None)
        base.fc = nn.Linear(base.fc.in_features, num_classes)
        for name, child in base.named_children():  # adopt torchvision's modules under their own names
            self.add_module(name, child)
        norm = dict(normalization or {})
        scale = float(norm.get("scale", 1.0 / 255.0))
        mean, std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))
        if not (std > 0 and scale > 0):
            raise ValueError(f"normalization scale and std must be positive, got {norm}")
        # normalised x = (pixels * scale - mean) / std, so (x * std + mean) * f = pixels / 255 (0..1) with
        # f = 1 / (255 * scale); then ImageNet's (v - m) / s per channel. One affine map: x * a + b.
        f = 1.0 / (255.0 * scale)
        imagenet_mean, imagenet_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("input_scale", (std * f / imagenet_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_shift", ((mean * f - imagenet_mean) / imagenet_std).view(1, 3, 1, 1),
                             persistent=False)
        for name in self.FROZEN:
            for parameter in getattr(self, name).parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet18:
        super().train(mode)
        for name in self.FROZEN:  # frozen layers keep ImageNet's (or the loaded) BatchNorm statistics
            getattr(self, name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x * self.input_scale + self.input_shift
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class PretrainedWeightsError(ValueError):
    """A weights file that is not a usable ResNet18 state dict; the message names the file."""


def load_pretrained(model: nn.Module, path: str | Path) -> tuple[int, list[str]]:
    """Load a torchvision-style state dict into ``model`` (``torch.load(weights_only=True)``: no pickled code).

    Tensors whose shape does not match (torchvision's 1000-class ``fc``) are skipped and reported; anything
    else wrong (not a state dict, keys of another network, a corrupt file) raises naming the file. A dict
    holding the state dict under ``state_dict`` or ``model`` (a training checkpoint) is accepted too.
    Returns (tensors loaded, names skipped).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PretrainedWeightsError(f"pretrained weights {path}: no such file") from None
    except Exception as exc:  # noqa: BLE001 - corrupt zip, truncated file, a pickle of anything else: all unusable
        raise PretrainedWeightsError(f"pretrained weights {path}: cannot be read as a PyTorch state dict "
                                     f"(torch.load with weights_only=True): {str(exc).splitlines()[0][:300]}") from None
    if isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise PretrainedWeightsError(f"pretrained weights {path}: expected a state dict (parameter name -> tensor), "
                                     f"got {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    # fc may be absent (a backbone); torchvision's own ImageNet files predate BatchNorm's num_batches_tracked
    missing = sorted(k for k in set(own) - set(state) if not k.startswith("fc.") and
                     not k.endswith(".num_batches_tracked"))
    if unknown or missing:
        detail = "; ".join(part for part in (
            f"{len(unknown)} unexpected keys such as {', '.join(unknown[:3])}" if unknown else "",
            f"{len(missing)} missing keys such as {', '.join(missing[:3])}" if missing else "") if part)
        raise PretrainedWeightsError(f"pretrained weights {path}: not a torchvision ResNet18 state dict ({detail})")
    skipped = sorted(k for k, v in state.items() if v.shape != own[k].shape)
    wrong = [k for k in skipped if not k.startswith("fc.")]
    if wrong:
        raise PretrainedWeightsError(f"pretrained weights {path}: tensor shapes do not match ResNet18's: "
                                     + ", ".join(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                 for k in wrong[:3]))
    usable = {k: v for k, v in state.items() if k not in skipped}
    if not all(torch.isfinite(v).all() for v in usable.values() if v.is_floating_point()):
        raise PretrainedWeightsError(f"pretrained weights {path}: holds NaN or infinite values")
    model.load_state_dict(usable, strict=False)
    return len(usable), skipped


def build_model(architecture: str, num_classes: int, kernel_size: int = 3, width: int | None = None,
                dropout: float | None = None, in_channels: int = 1, image_size: int = 28,
                normalization: Mapping[str, float] | None = None) -> nn.Module:
    """Build a network by name; unknown names raise with the list of valid ones.

    ``normalization`` (the manifest's scale/mean/std) matters only to ``resnet18``, which undoes it.
    """
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
    if architecture == "resnet18":
        return ResNet18(**kwargs, normalization=normalization)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
