"""Training job (TensorFlow script mode): the CNN of train_cnn.py, built and trained with Keras.

The same job contract as train_cnn.py: the ``train`` and ``validation`` channels (SM_CHANNEL_*), the same
hyperparameters (training/train_common.py), one metrics line per epoch for SageMaker's metric_definitions,
``history.json`` + ``learning_curves.png`` in SM_OUTPUT_DATA_DIR, a failure file on bad input. The model goes to
SM_MODEL_DIR in the layout SageMaker's TensorFlow Serving container loads:

    1/saved_model.pb, 1/variables/...   the SavedModel (version 1); signature serving_default takes raw pixels
                                        0..255 ("pixels", (N, H, W) or (N, C, H, W) float32), normalizes them
                                        itself and returns {"probabilities": (N, classes)}
    model_config.json                   what the handlers need (class names, image shape, the signature)
    code/inference.py                   input_handler(data, context) / output_handler(response, context)
    code/requirements.txt

The TensorFlow image's launcher passes ``--model_dir`` (the estimator's model_dir); the model is written to
SM_MODEL_DIR as SageMaker uploads it, so the argument is only logged. With several hosts every host trains the
same way (no distribution strategy is configured) and only the first writes the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a job script: make the `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# smdebug's generated protobuf modules (the Debugger callback) only load with the pure-python protobuf runtime,
# and TensorFlow loads protobuf first: set before importing it.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import keras
import numpy as np
import tensorflow as tf

from training.atomic import atomic_write_json, staged_dir
from training.datasets import DatasetError, Split, load_manifest, load_split
from training.job_env import JobEnv, copy_inference_code, write_failure
from training.metrics import format_metrics_line
from training.train_common import (
    EpochRecord,
    TrainConfig,
    fit_batch_size,
    parse_args,
    plot_learning_curves,
    stratified_fraction,
)

LOG = logging.getLogger("train_keras")
SAVED_MODEL_VERSION = "1"  # TF Serving loads <model>/<version>/saved_model.pb
SIGNATURE = "serving_default"
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"


def configure_threads(count: int) -> None:
    """Intra-op threads = the job's CPUs; must run before TensorFlow starts its thread pools."""
    try:
        tf.config.threading.set_intra_op_parallelism_threads(count)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, count))
    except RuntimeError:  # already initialised (tests that train twice in one process)
        pass


def channels_last(images: np.ndarray) -> np.ndarray:
    """(N, H, W) -> (N, H, W, 1); (N, C, H, W) -> (N, H, W, C)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        return images[..., None]
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def one_cycle_schedule(max_lr: float, total_steps: int, pct_start: float = 0.25, div_factor: float = 10.0,
                       final_div_factor: float = 100.0):
    """torch.optim.lr_scheduler.OneCycleLR (cosine annealing, two phases), as a Keras schedule."""
    from keras import ops

    initial = max_lr / div_factor
    minimum = initial / final_div_factor
    up_end = float(pct_start * total_steps) - 1
    down_end = float(total_steps - 1)

    @keras.saving.register_keras_serializable(package="mlops")
    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")

            def anneal(start, end, pct):
                return end + (start - end) / 2.0 * (ops.cos(math.pi * pct) + 1.0)

            up = anneal(initial, max_lr, ops.clip(step / max(up_end, 1e-9), 0.0, 1.0))
            down = anneal(max_lr, minimum, ops.clip((step - up_end) / max(down_end - up_end, 1e-9), 0.0, 1.0))
            return ops.where(step <= up_end, up, down)

        def get_config(self):
            return {}

    return OneCycle()


def make_optimizer(config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    if config.scheduler == "onecycle":
        lr = one_cycle_schedule(config.lr, total)
    elif config.scheduler == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(config.lr, decay_steps=total, alpha=0.0)
    else:
        lr = config.lr
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay or None)
    elif config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(lr)
    else:
        optimizer = keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)
    if optimizer.weight_decay:
        # As train_cnn.py: no decay on biases and BatchNorm's scale and offset (the 1-d parameters).
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def augmenter(config: TrainConfig, fill: float, seed: int):
    """Batched random rotation (+-rotation_degrees, one projective transform per image) and cutout, as tf ops."""
    generator = tf.random.Generator.from_seed(seed)
    degrees, size, prob = config.rotation_degrees, config.cutout, config.cutout_prob

    def augment(images, labels):
        shape = tf.shape(images)
        n, h, w = shape[0], shape[1], shape[2]
        if degrees > 0:
            angles = generator.uniform([n], -1.0, 1.0) * math.radians(degrees)
            cos, sin = tf.cos(angles), tf.sin(angles)
            cx, cy = (tf.cast(w, tf.float32) - 1) / 2, (tf.cast(h, tf.float32) - 1) / 2
            transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy,
                                   tf.zeros([n]), tf.zeros([n])], axis=1)
            images = tf.raw_ops.ImageProjectiveTransformV3(
                images=images, transforms=transforms, output_shape=tf.stack([h, w]), fill_value=fill,
                interpolation="BILINEAR", fill_mode="CONSTANT")
        if size > 0:
            top = generator.uniform([n], 0, h, dtype=tf.int32) - size // 2
            left = generator.uniform([n], 0, w, dtype=tf.int32) - size // 2
            rows = tf.range(h)[None, :, None]
            cols = tf.range(w)[None, None, :]
            top, left = top[:, None, None], left[:, None, None]
            mask = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
            mask &= (generator.uniform([n]) < prob)[:, None, None]
            images = tf.where(mask[..., None], tf.cast(fill, images.dtype), images)
        return images, labels

    return augment


class EpochLog(keras.callbacks.Callback):
    """The metrics line and history of every epoch; stops on a non-finite loss and on max-train-seconds."""

    def __init__(self, config: TrainConfig, on_epoch=None) -> None:
        super().__init__()
        self.config = config
        self.on_epoch = on_epoch
        self.history: list[EpochRecord] = []
        self.started = time.perf_counter()
        self.epoch_start = self.started
        self.stopped_early = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start = time.perf_counter()
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at epoch {self.epoch} step {batch}; "
                                     "lower lr")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        now = time.perf_counter()
        lr = float(np.asarray(self.model.optimizer.learning_rate))
        record = EpochRecord(epoch + 1, float(logs["loss"]), float(logs["val_loss"]),
                             float(logs["val_accuracy"]), lr, now - self.epoch_start, now - self.started)
        self.history.append(record)
        print(format_metrics_line(epoch=record.epoch, train_loss=record.train_loss, val_loss=record.val_loss,
                                  val_accuracy=record.val_accuracy, epoch_seconds=record.epoch_seconds),
              flush=True)
        if self.on_epoch is not None:
            self.on_epoch(record, self.model)
        limit = self.config.max_train_seconds
        if limit and now - self.started >= limit and epoch + 1 < self.config.epochs:
            LOG.warning("stopping after epoch %d: max-train-seconds=%s reached", epoch + 1, limit)
            self.model.stop_training = True
            self.stopped_early = True


def train(config: TrainConfig, train_split: Split, val_split: Split, num_classes: int, on_epoch=None,
          debug_session=None):
    """Train with model.fit and return the Keras model and the per-epoch history."""
    from training.keras_models import build_keras_model

    keras.utils.set_random_seed(config.seed)
    train_split = stratified_fraction(train_split, config.train_fraction, config.seed)
    config = fit_batch_size(config, len(train_split.labels))
    x_train, x_val = channels_last(train_split.images), channels_last(val_split.images)
    y_train = np.eye(num_classes, dtype=np.float32)[train_split.labels]
    y_val = np.eye(num_classes, dtype=np.float32)[val_split.labels]
    fill = float(x_train.min())  # the normalized background value
    model = build_keras_model(config.architecture, num_classes, kernel_size=config.kernel_size, width=config.width,
                              dropout=config.dropout, in_channels=x_train.shape[-1], image_size=x_train.shape[1])
    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    LOG.info("%s: %d parameters, %d training / %d validation images", config.architecture, model.count_params(),
             len(y_train), len(y_val))
    model.compile(optimizer=make_optimizer(config, steps_per_epoch),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    dataset = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    dataset = dataset.shuffle(len(y_train), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    if config.augment:
        dataset = dataset.map(augmenter(config, fill, config.seed + 1))
    dataset = dataset.prefetch(2)
    epoch_log = EpochLog(config, on_epoch)
    callbacks = [epoch_log]
    if debug_session is not None:
        callbacks.append(debug_session.callback(model, x_train, y_train, config.batch_size))
    model.fit(dataset, epochs=config.epochs, validation_data=(x_val, y_val), validation_batch_size=2000,
              callbacks=callbacks, verbose=0, shuffle=False)  # the dataset shuffles itself
    if debug_session is not None:
        debug_session.close()
    return model, epoch_log.history


def export_saved_model(model, path: Path, image_shape: list[int], normalization: dict) -> None:
    """The SavedModel TF Serving loads: signature serving_default(pixels 0..255) -> {"probabilities"}."""
    scale, mean, std = (float(normalization.get(k, d)) for k, d in (("scale", 1 / 255), ("mean", 0.0), ("std", 1.0)))
    grayscale = len(image_shape) == 2

    def serve(pixels):
        x = (pixels * scale - mean) / std
        x = tf.expand_dims(x, -1) if grayscale else tf.transpose(x, [0, 2, 3, 1])
        return {OUTPUT_NAME: tf.nn.softmax(model(x, training=False), axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(SIGNATURE, serve, input_signature=[
        tf.TensorSpec([None, *image_shape], tf.float32, name=INPUT_NAME)])
    archive.write_out(str(path), verbose=False)


def save_model(model, config: TrainConfig, manifest: dict, model_dir: Path) -> None:
    """SavedModel version 1 + model_config.json + the handlers, in the TensorFlow Serving container's layout."""
    with staged_dir(model_dir) as staging:
        export_saved_model(model, staging / SAVED_MODEL_VERSION, list(manifest["image_shape"]),
                           manifest["normalization"])
        atomic_write_json(staging / "model_config.json", {
            "framework": "tensorflow",
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
            "saved_model": {"version": SAVED_MODEL_VERSION, "signature": SIGNATURE, "input": INPUT_NAME,
                            "output": OUTPUT_NAME},
        })
        copy_inference_code(staging, "tensorflow")


def is_leader(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    hosts = json.loads(env.get("SM_HOSTS") or '["algo-1"]')
    current = env.get("SM_CURRENT_HOST") or hosts[0]
    if current not in hosts:
        raise ValueError(f"SM_CURRENT_HOST {current!r} is not one of SM_HOSTS {hosts}")
    return current == hosts[0]


def run(config: TrainConfig, env: JobEnv, debug_session=None, leader: bool = True) -> list[EpochRecord]:
    configure_threads(config.num_threads or env.num_cpus)
    if config.precision == "bf16":  # auto means float32 here: TF's oneDNN bfloat16 path was not measured
        LOG.warning("precision bf16 applies to train_cnn.py (PyTorch); the Keras network trains in float32")
    train_dir, val_dir = env.channel("train"), env.channel("validation")
    manifest = load_manifest(train_dir)
    train_split, val_split = load_split(train_dir, "train"), load_split(val_dir, "validation")
    model, history = train(config, train_split, val_split, manifest["num_classes"], debug_session=debug_session)
    if not leader:  # SageMaker uploads every host's model folder: only the leader writes one
        return history
    save_model(model, config, manifest, env.model_dir)
    with staged_dir(env.output_data_dir) as staging:
        atomic_write_json(staging / "history.json", {"config": asdict(config), "framework": "tensorflow",
                                                     "epochs": [asdict(r) for r in history]})
        plot_learning_curves(history, staging / "learning_curves.png")
    return history


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = JobEnv.from_environ()
    try:
        config, unknown = parse_args(argv, __doc__)
        from training.keras_models import ARCHITECTURES as KERAS_ARCHITECTURES

        if config.architecture not in KERAS_ARCHITECTURES:
            raise ValueError(f"architecture {config.architecture!r} is PyTorch only (train_cnn.py); train_keras.py "
                             f"builds {', '.join(KERAS_ARCHITECTURES)}")
        known_launcher_args = [a for a in unknown if a.startswith("--model_dir")]
        if known_launcher_args:
            LOG.info("model_dir from the launcher is not used: the SavedModel goes to SM_MODEL_DIR (%s)", env.model_dir)
        others = [a for i, a in enumerate(unknown) if not a.startswith("--model_dir")
                  and not (i > 0 and unknown[i - 1] == "--model_dir")]
        if others:
            LOG.info("ignoring arguments not meant for this script: %s", " ".join(others))
        leader = is_leader()
        from training.keras_debugger import session_from_env

        run(config, env, debug_session=session_from_env(env) if leader else None, leader=leader)
    except (DatasetError, ValueError, FloatingPointError) as exc:
        write_failure(env, str(exc))
        print(f"train_keras failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
