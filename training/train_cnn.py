"""Training job (PyTorch script mode): a CNN on the preprocessed splits.

Reads the ``train`` and ``validation`` channels (SM_CHANNEL_*) and, for ``resnet18``, pretrained weights
from the optional ``weights`` channel (a torchvision-style state dict; none: it trains from scratch and says
so). It trains with the data held in memory
(batched rotation + cutout augmentation, one-cycle schedule by default), prints one metrics line per
epoch for SageMaker's metric_definitions, and writes ``model.pth`` + ``model_config.json`` (+ the
inference code) to SM_MODEL_DIR and ``history.json`` + ``learning_curves.png`` to SM_OUTPUT_DATA_DIR.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a job script: make the `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.atomic import atomic_write_json, staged_dir
from training.datasets import DatasetError, Split, load_manifest, load_split, verify_checksums
from training.debugger import session_from_env
from training.distributed import Cluster
from training.job_env import JobEnv, copy_inference_code, granted_cpus, write_failure
from training.metrics import format_metrics_line
from training.models import build_model, count_parameters, load_pretrained
from training.train_common import (  # noqa: F401 - re-exported: TrainConfig & co. were defined here first
    ARCHITECTURES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULERS,
    EpochRecord,
    TrainConfig,
    fit_batch_size,
    parse_args,
    plot_learning_curves,
    stratified_fraction,
)

LOG = logging.getLogger("train_cnn")
WEIGHTS_CHANNEL = "weights"
WEIGHTS_SUFFIXES = (".pth", ".pt")
PRETRAINED_ARCHITECTURES = ("resnet18",)


def to_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(split.images, dtype=np.float32))
    if images.ndim == 3:
        images = images.unsqueeze(1)
    return images, torch.from_numpy(split.labels)


def augment_batch(x: torch.Tensor, degrees: float, cutout: int, cutout_prob: float, fill: float,
                  generator: torch.Generator) -> torch.Tensor:
    """Random rotation (+-degrees) of the whole batch in one grid_sample, then a cutout square on a share of images."""
    n, _, h, w = x.shape
    if degrees > 0:
        angles = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(degrees)
        cos, sin = torch.cos(angles), torch.sin(angles)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x - fill, grid, align_corners=False, padding_mode="zeros") + fill
    if cutout > 0:
        cy = torch.randint(0, h, (n,), generator=generator)
        cx = torch.randint(0, w, (n,), generator=generator)
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        top, left = (cy - cutout // 2).view(n, 1, 1), (cx - cutout // 2).view(n, 1, 1)
        mask = (rows >= top) & (rows < top + cutout) & (cols >= left) & (cols < left + cutout)
        mask &= (torch.rand(n, generator=generator) < cutout_prob).view(n, 1, 1)
        x = x.masked_fill(mask.unsqueeze(1), fill)
    return x


@torch.inference_mode()
def evaluate_model(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split."""
    model.eval()
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        logits = model(images[start:start + batch_size].contiguous(memory_format=torch.channels_last))
        target = labels[start:start + batch_size]
        total_loss += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    return total_loss / len(labels), correct / len(labels)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]  # resnet18's frozen layers are left out
    decay = [p for p in trainable if p.ndim > 1]
    no_decay = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.scheduler == "onecycle":
        # OneCycleLR divides by zero when its warm-up spans under one step (total_steps <= 4: a few batches of a
        # small image folder); a run that short stops part-way through the schedule instead.
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=max(total, 5),
                                                   pct_start=0.25,
                                                   div_factor=10.0, final_div_factor=100.0)
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return None


EpochCallback = Callable[[EpochRecord, nn.Module], None]
GRANT_CHECK_STEPS = 50  # how often (in batches) a local job looks whether it was granted more or fewer cores


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast type for ``precision`` (None: plain float32); auto picks bfloat16 only where it is native."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if native else None


def follow_cpu_grant(config: TrainConfig) -> None:
    """Use as many threads as the local executor grants now (it grows the grant when cores fall idle).

    Does nothing on SageMaker (no grant file) or when ``num-threads`` is set.
    """
    granted = None if config.num_threads else granted_cpus()
    if granted is not None and granted != torch.get_num_threads():
        LOG.info("CPU grant changed: %d -> %d threads", torch.get_num_threads(), granted)
        torch.set_num_threads(granted)


def find_pretrained(environ: dict[str, str] | None = None) -> Path | None:
    """The weights file in the ``weights`` channel (SM_CHANNEL_WEIGHTS), or None without one.

    The channel may hold only a note (the pipeline's default prefix): no *.pth/*.pt file means no weights.
    A SHA256SUMS beside the file (local paths are staged with one) is verified; two candidate files are an error.
    """
    env = os.environ if environ is None else environ
    folder = env.get(f"SM_CHANNEL_{WEIGHTS_CHANNEL.upper()}")
    if not folder or not Path(folder).is_dir():
        return None
    verify_checksums(folder)
    found = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in WEIGHTS_SUFFIXES)
    if len(found) > 1:
        raise ValueError(f"weights channel {folder}: expected one *.pth/*.pt file, found {len(found)}: "
                         + ", ".join(p.name for p in found[:5]))
    return found[0] if found else None


def prepare_model(config: TrainConfig, num_classes: int, in_channels: int, image_size: int,
                  normalization: dict | None = None, pretrained: Path | None = None) -> nn.Module:
    """Build the configured network; resnet18 starts from ``pretrained`` when given, else from scratch (said so)."""
    model = build_model(config.architecture, num_classes, kernel_size=config.kernel_size, width=config.width,
                        dropout=config.dropout, in_channels=in_channels, image_size=image_size,
                        normalization=normalization)
    if config.architecture not in PRETRAINED_ARCHITECTURES:
        if pretrained is not None:
            LOG.info("%s does not take pretrained weights; ignoring %s", config.architecture, pretrained)
        return model
    if pretrained is None:
        LOG.info("%s: no pretrained weights in the %r channel (PretrainedWeightsUrl): training from scratch "
                 "(random initialisation, layers up to layer3 stay frozen)", config.architecture, WEIGHTS_CHANNEL)
        return model
    loaded, skipped = load_pretrained(model, pretrained)
    LOG.info("%s: loaded pretrained weights from %s (%d tensors)%s", config.architecture, pretrained, loaded,
             f"; skipped {', '.join(skipped)} (shape differs: a new head for {num_classes} classes)" if skipped else "")
    return model


def train(config: TrainConfig, train_split: Split, val_split: Split, num_classes: int,
          on_epoch: EpochCallback | None = None, debug_session=None,
          cluster: Cluster | None = None, normalization: dict | None = None,
          pretrained: Path | None = None) -> tuple[nn.Module, list[EpochRecord]]:
    """Train and return the model and per-epoch history; ``on_epoch`` lets benchmarks watch test accuracy.

    With several hosts (``cluster``), every host draws the same global batches and trains on its share of each.
    ``normalization`` (the manifest's) and ``pretrained`` (a weights file) matter to resnet18 only.
    """
    cluster = cluster or Cluster()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # the batch order: the same on every host
    augmenting = generator if cluster.size == 1 else torch.Generator().manual_seed(config.seed + 1 + cluster.rank)
    train_split = stratified_fraction(train_split, config.train_fraction, config.seed)
    config = fit_batch_size(config, len(train_split.labels))
    x_train, y_train = to_tensors(train_split)
    x_val, y_val = to_tensors(val_split)
    fill = float(x_train.min())  # the normalized background value
    model = prepare_model(config, num_classes, x_train.shape[1], x_train.shape[-1], normalization, pretrained)
    total, trainable = count_parameters(model, trainable_only=False), count_parameters(model)
    LOG.info("%s: %d parameters%s, %d training / %d validation images%s", config.architecture, total,
             f" ({trainable} trainable)" if trainable != total else "", len(y_train), len(y_val),
             f", host {cluster.rank + 1} of {cluster.size}" if cluster.size > 1 else "")
    # Channels-last: oneDNN's convolutions skip a layout reorder per call (10.4 vs 12.9 s per epoch with bfloat16
    # on 2 threads here; docs/decisions.md). The weights keep their shapes; the saved state dict is the same.
    model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    network = cluster.wrap(model)
    # The last, partial batch only when every host gets at least 2 images of it: BatchNorm in training mode
    # cannot take a batch of one where a map is 1x1 (resnet18's layer4, the heads), so such a batch is dropped.
    steps_per_epoch = len(y_train) // config.batch_size + (len(y_train) % config.batch_size >= 2 * cluster.size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(y_train)} training images are too few for a batch (need at least 2 per host)")
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    if debug_session is not None:
        debug_session.attach(model, loss_fn)
    compute = autocast_dtype(config.precision)
    LOG.info("precision %s: %s", config.precision, "bfloat16 autocast (float32 weights)" if compute else "float32")
    history: list[EpochRecord] = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        if debug_session is not None:
            debug_session.set_mode("train")
        order = torch.randperm(len(y_train), generator=generator)
        running, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = cluster.share(order[step * config.batch_size:(step + 1) * config.batch_size])
            xb, yb = x_train[idx], y_train[idx]
            if config.augment:
                xb = augment_batch(xb, config.rotation_degrees, config.cutout, config.cutout_prob, fill, augmenting)
            xb = xb.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=compute or torch.bfloat16, enabled=compute is not None):
                loss = loss_fn(network(xb), yb)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch} step {step}; lower lr")
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running += loss.item() * len(yb)
            seen += len(yb)
            if debug_session is not None:
                debug_session.step()
            if step % GRANT_CHECK_STEPS == GRANT_CHECK_STEPS - 1:
                follow_cpu_grant(config)
        if debug_session is not None:
            debug_session.set_mode("eval")
        running, seen = cluster.total(running, seen)
        val_loss, val_acc = evaluate_model(model, x_val, y_val)
        if debug_session is not None:
            debug_session.record_validation(val_loss)  # Debugger's Overfit/Overtraining compare it with training
        now = time.perf_counter()
        record = EpochRecord(epoch, running / seen, val_loss, val_acc, optimizer.param_groups[0]["lr"],
                             now - epoch_start, now - started)
        history.append(record)
        print(format_metrics_line(epoch=epoch, train_loss=record.train_loss, val_loss=val_loss, val_accuracy=val_acc,
                                  epoch_seconds=record.epoch_seconds), flush=True)
        if on_epoch is not None:
            on_epoch(record, model)
        over_time = bool(config.max_train_seconds and now - started >= config.max_train_seconds)
        if cluster.total(float(over_time))[0] and epoch < config.epochs:  # all hosts stop together, or none
            LOG.warning("stopping after epoch %d: max-train-seconds=%s reached", epoch, config.max_train_seconds)
            break
    return model, history


def save_model(model: nn.Module, config: TrainConfig, manifest: dict, model_dir: Path) -> None:
    """Weights + the config that rebuilds the network + the inference code, in SageMaker's layout."""
    with staged_dir(model_dir) as staging:
        # Contiguous copies: a channels-last state dict would carry its strides into every loader.
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, staging / "model.pth")
        atomic_write_json(staging / "model_config.json", {
            "framework": "pytorch",
            "architecture": config.architecture,
            "kernel_size": config.kernel_size,
            "width": config.width,
            "dropout": config.dropout,
            "num_classes": manifest["num_classes"],
            "class_names": manifest["class_names"],
            "image_shape": manifest["image_shape"],
            "in_channels": 3 if len(manifest["image_shape"]) == 3 else 1,
            "normalization": manifest["normalization"],
            "data_format": manifest.get("format", "idx"),  # idx 28x28: the endpoint reads images as MNIST digits
        })
        copy_inference_code(staging, "pytorch")


def run(config: TrainConfig, env: JobEnv, debug_session=None, cluster: Cluster | None = None) -> list[EpochRecord]:
    cluster = cluster or Cluster()
    torch.set_num_threads(config.num_threads or env.num_cpus)
    train_dir, val_dir = env.channel("train"), env.channel("validation")
    manifest = load_manifest(train_dir)
    train_split, val_split = load_split(train_dir, "train"), load_split(val_dir, "validation")
    pretrained = find_pretrained()
    cluster.start()
    try:
        model, history = train(config, train_split, val_split, manifest["num_classes"], debug_session=debug_session,
                               cluster=cluster, normalization=manifest["normalization"], pretrained=pretrained)
    finally:
        cluster.stop()
    if not cluster.is_leader:  # SageMaker uploads every host's model folder: only the leader writes one
        return history
    save_model(model, config, manifest, env.model_dir)
    with staged_dir(env.output_data_dir) as staging:
        atomic_write_json(staging / "history.json", {"config": asdict(config), "parameters": count_parameters(model),
                                                     "epochs": [asdict(r) for r in history],
                                                     "pretrained_weights": pretrained.name if pretrained else None})
        plot_learning_curves(history, staging / "learning_curves.png")
    return history


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = JobEnv.from_environ()
    try:
        config, unknown = parse_args(argv, __doc__)
        if unknown:
            LOG.info("ignoring arguments not meant for this script: %s", " ".join(unknown))
        cluster = Cluster.from_environ()
        run(config, env, debug_session=session_from_env(env) if cluster.is_leader else None, cluster=cluster)
    except (DatasetError, ValueError, FloatingPointError) as exc:
        write_failure(env, str(exc))
        print(f"train_cnn failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
