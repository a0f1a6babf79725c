"""SageMaker Debugger and step timing inside the Keras training job (train_keras.py), without smdebug's Keras hook.

smdebug 1.0.34's TensorFlow hook does not support Keras 3, so this module drives smdebug's framework-neutral
core instead: :class:`KerasHook` is an ``smdebug.core.hook.CallbackHook`` that takes numpy values, created from
the same ``debughookconfig.json`` (``$SMDEBUG_CONFIG_FILE_PATH`` or ``$SM_INPUT_CONFIG_DIR``), so the hook config's
collections, save intervals, modes and reductions decide what is written, by smdebug's own writer, in its own
trial layout (``events/``, ``index/``, ``collections/``, ``training_job_end.ts``). The local rules
(mlops/local/rules.py) and SageMaker's rule containers read it as they read the PyTorch hook's trial.

A Keras callback (:class:`DebugCallback`) feeds the hook at every training step:

- ``loss``: the step's own training loss (recovered from the running mean Keras reports), and once per epoch the
  validation loss as an EVAL step (Overfit, Overtraining, LossNotDecreasing compare them);
- ``gradients/<variable>``: the gradients of the loss on a fixed probe batch of training images, with the
  weights of that step (VanishingGradient); Keras callbacks never see the gradients model.fit applies;
- ``weights/<variable>``, ``biases/<variable>``;
- ``<block>_relu_input`` / ``<block>_relu_output``: what every ReLU layer receives and returns on the probe batch
  (PoorWeightInitialization reads the inputs' variance, min and max).

The probe runs in training mode (BatchNorm on batch statistics, as in a step) and leaves the model's state as it
found it. With a profiler config the callback also times every step (data wait vs compute) into
``step_times.json`` under the profiler's framework folder, the file the local profiler report reads.
"""

from __future__ import annotations

import os

# smdebug's generated protobuf modules only load with the pure-python protobuf runtime.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import atexit
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.debugger import (
    CONFIG_DIR_ENV,
    DEFAULT_CONFIG_DIR,
    HOOK_CONFIG_ENV,
    HOOK_CONFIG_FILE,
    PROFILER_CONFIG_FILE,
    STEP_TIMES_FILE,
    profile_window,
)

LOG = logging.getLogger("train_keras.debugger")
PROBE_IMAGES = 128
LOSS = "loss"


def hook_class() -> type:
    """smdebug's CallbackHook for numpy values (built on first use: smdebug logs and loads protobuf at import)."""
    logging.getLogger("smdebug").setLevel(logging.WARNING)
    from smdebug.core.collection import CollectionKeys
    from smdebug.core.collection_manager import CollectionManager
    from smdebug.core.config_constants import DEFAULT_WORKER_NAME
    from smdebug.core.hook import CallbackHook
    from smdebug.core.json_config import create_hook_from_json_config
    from smdebug.core.reductions import get_numpy_reduction
    from smdebug.core.utils import FRAMEWORK
    from smdebug.profiler.profiler_config_parser import ProfilerConfigParser

    defaults = {CollectionKeys.LOSSES: f"^{LOSS}$", CollectionKeys.GRADIENTS: "^gradients/",
                CollectionKeys.WEIGHTS: "^weights/", CollectionKeys.BIASES: "^biases/",
                "relu_input": "_relu_input$", "relu_output": "_relu_output$"}

    class KerasHook(CallbackHook):
        def __init__(self, out_dir: str | None = None, export_tensorboard: bool = False,
                     tensorboard_dir: str | None = None, dry_run: bool = False, reduction_config: Any = None,
                     save_config: Any = None, include_regex: Any = None, include_collections: Any = None,
                     save_all: bool = False, include_workers: str = "one") -> None:
            manager = CollectionManager()
            for name, regex in defaults.items():
                manager.get(name).include(regex)
            super().__init__(collection_manager=manager, default_include_collections=[CollectionKeys.LOSSES],
                             profiler_config_parser=ProfilerConfigParser(FRAMEWORK.TENSORFLOW),
                             data_type_name=None, out_dir=out_dir, export_tensorboard=export_tensorboard,
                             tensorboard_dir=tensorboard_dir, dry_run=dry_run, reduction_config=reduction_config,
                             save_config=save_config, include_regex=include_regex,
                             include_collections=include_collections, save_all=save_all,
                             include_workers=include_workers)
            self.worker = self._get_worker_name()

        @classmethod
        def create_from_json_file(cls, json_file_path: str | None = None) -> KerasHook:
            return create_hook_from_json_config(cls, json_config_path=json_file_path)

        def _get_worker_name(self) -> str:
            return DEFAULT_WORKER_NAME

        def _get_num_workers(self) -> int:
            return 1

        def _is_not_supported(self) -> bool:
            return False

        def _get_default_collections(self) -> list[str]:
            return [*defaults, CollectionKeys.DEFAULT]

        def _export_model(self) -> None:
            pass

        @staticmethod
        def _get_reduction_of_data(reduction_name: str, tensor_value: Any, tensor_name: str, abs: bool) -> Any:
            return get_numpy_reduction(reduction_name, np.asarray(tensor_value), abs)

        @staticmethod
        def _make_numpy_array(tensor_value: Any) -> np.ndarray:
            return np.asarray(tensor_value)

        # --- what the callback drives --------------------------------------------------------------------------
        def begin_step(self, mode: Any) -> None:
            """Close the previous step's writer, start a step in ``mode`` and open a writer if it saves anything."""
            if self.writer is not None:
                self._close_writers()
            if not self.prepared_collections:
                self._prepare_collections()
                self.prepared_collections = True
            if self.mode != mode:
                self.set_mode(mode)
            self._increment_step()
            if self._get_collections_to_save_for_step():
                self._initialize_writers()

        def end_step(self) -> None:
            if self.writer is not None:
                self._close_writers()

        def saves(self, collection: str) -> bool:
            return self._is_collection_being_saved_for_step(collection)

        def save(self, name: str, value: Any) -> None:
            self._save_for_tensor(name, np.asarray(value))

    return KerasHook


def _make_callback(session: KerasDebugSession, model: Any, x_train: np.ndarray, y_train: np.ndarray,
                   batch_size: int) -> Any:
    import keras
    import tensorflow as tf
    from smdebug.core.modes import ModeKeys

    from training.keras_models import relu_layers

    probe_x = tf.constant(x_train[:PROBE_IMAGES])
    probe_y = tf.constant(y_train[:PROBE_IMAGES])
    relus = relu_layers(model)
    relu_model = keras.Model(model.inputs, [layer.input for layer in relus] + [layer.output for layer in relus]) \
        if relus else None
    n_train = len(y_train)

    class DebugCallback(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seen = 0
            self.total = 0.0
            self.last_end: float | None = None
            self.step_start: float | None = None

        # the probe must not move BatchNorm's moving statistics (nor anything else that is not trained)
        def _probe(self, fn: Any) -> Any:
            saved = [v.numpy() for v in model.non_trainable_variables]
            try:
                return fn()
            finally:
                for variable, value in zip(model.non_trainable_variables, saved, strict=True):
                    variable.assign(value)

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.seen, self.total = 0, 0.0
            self.last_end = None  # the gap after validation is not data loading

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.step_start = time.perf_counter()
            hook = session.hook
            if hook is not None:
                hook.begin_step(ModeKeys.TRAIN)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            end = time.perf_counter()
            if session.timing and self.step_start is not None:
                data = self.step_start - self.last_end if self.last_end is not None else 0.0
                session.timings.append([session.steps, time.time() - (end - self.step_start), round(data, 6),
                                        round(end - self.step_start, 6)])
            session.steps += 1
            size = min(batch_size, n_train - self.seen)
            mean = float((logs or {}).get("loss", np.nan))
            total = mean * (self.seen + size)
            step_loss = (total - self.total) / max(size, 1)  # Keras reports the epoch's running mean
            self.seen, self.total = self.seen + size, total
            hook = session.hook
            if hook is not None:
                if hook.saves("losses"):
                    hook.save(LOSS, np.float32(step_loss))
                self._save_variables(hook)
                if hook.saves("gradients"):
                    self._save_gradients(hook)
                if relu_model is not None and (hook.saves("relu_input") or hook.saves("relu_output")):
                    self._save_relus(hook)
            self.last_end = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            hook = session.hook
            if hook is None or "val_loss" not in (logs or {}):
                return
            hook.begin_step(ModeKeys.EVAL)
            if hook.saves("losses"):
                hook.save(LOSS, np.float32(logs["val_loss"]))
            hook.end_step()

        def _save_variables(self, hook: Any) -> None:
            weights, biases = hook.saves("weights"), hook.saves("biases")
            if not (weights or biases):
                return
            for variable in model.trainable_variables:
                is_bias = len(variable.shape) <= 1
                if (biases and is_bias) or (weights and not is_bias):
                    hook.save(f"{'biases' if is_bias else 'weights'}/{variable.path}", variable.numpy())

        def _save_gradients(self, hook: Any) -> None:
            def gradients() -> list[Any]:
                with tf.GradientTape() as tape:
                    logits = model(probe_x, training=True)
                    loss = model.loss(probe_y, logits)
                return tape.gradient(loss, model.trainable_variables)

            for variable, gradient in zip(model.trainable_variables, self._probe(gradients), strict=True):
                if gradient is not None:
                    hook.save(f"gradients/{variable.path}", np.asarray(gradient))

        def _save_relus(self, hook: Any) -> None:
            values = self._probe(lambda: relu_model(probe_x, training=True))
            for layer, value in zip(relus, values[:len(relus)], strict=True):
                hook.save(f"{layer.name}_input", np.asarray(value))
            for layer, value in zip(relus, values[len(relus):], strict=True):
                hook.save(f"{layer.name}_output", np.asarray(value))

    return DebugCallback()


class KerasDebugSession:
    """What train_keras.train() drives: callback(model, x, y, batch_size) for model.fit, then close()."""

    def __init__(self, hook_config: Path | None, profiler_dir: Path | None, window: tuple[int, int] | None) -> None:
        self.hook_config = hook_config
        self.profiler_dir = profiler_dir
        self.window = window
        self.hook: Any = None
        self.timing = profiler_dir is not None
        self.timings: list[list[float]] = []  # [step, start (epoch seconds), data seconds, compute seconds]
        self.steps = 0
        self.closed = False

    def callback(self, model: Any, x_train: np.ndarray, y_train: np.ndarray, batch_size: int) -> Any:
        if self.hook_config is not None and self.hook is None:
            self.hook = hook_class().create_from_json_file(str(self.hook_config))
        atexit.register(self.close)
        return _make_callback(self, model, x_train, y_train, batch_size)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.profiler_dir is not None:
            self.profiler_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.profiler_dir / f".{STEP_TIMES_FILE}.tmp"
            tmp.write_text(json.dumps({"columns": ["step", "start", "data_seconds", "compute_seconds"],
                                       "steps": self.timings}))
            os.replace(tmp, self.profiler_dir / STEP_TIMES_FILE)
        if self.hook is not None:
            self.hook.close()


def require_smdebug() -> None:
    try:
        import smdebug.core.hook  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"the job has a Debugger hook config (DebugHookConfig) but smdebug cannot be imported "
                         f"({exc}): the image must install it (the bundle's requirements.txt pins it)") from exc


def session_from_env(env: Any = None, environ: dict[str, str] | None = None) -> KerasDebugSession | None:
    """The job's session, or None when neither Debugger nor the profiler was configured (as training/debugger.py)."""
    environ = os.environ if environ is None else environ
    config_dir = Path(environ.get(CONFIG_DIR_ENV) or DEFAULT_CONFIG_DIR)
    hook_path = Path(environ.get(HOOK_CONFIG_ENV) or config_dir / HOOK_CONFIG_FILE)
    hook_config = hook_path if hook_path.is_file() else None
    if hook_config is not None:
        require_smdebug()
    profiler_dir, window = None, None
    profiler_path = config_dir / PROFILER_CONFIG_FILE
    if profiler_path.is_file():
        try:
            config = json.loads(profiler_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{profiler_path}: cannot read the profiler config: {exc}") from exc
        if not config.get("DisableProfiler"):
            local = (config.get("ProfilingParameters") or {}).get("LocalPath")
            output_dir = getattr(env, "output_dir", None) or Path(environ.get("SM_OUTPUT_DIR", "/opt/ml/output"))
            profiler_dir = (Path(local) if local else Path(output_dir) / "profiler") / "framework"
            window = profile_window(config)
    if hook_config is None and profiler_dir is None:
        return None
    return KerasDebugSession(hook_config, profiler_dir, window)
