"""SageMaker Debugger and framework profiling inside the CNN training job (the seam train_cnn.py calls).

``session_from_env(env)`` returns a :class:`DebugSession` when the job was given a Debugger hook config or a
profiler config, else None. SageMaker writes both from the request (DebugHookConfig, ProfilerConfig) into the
input config folder, ``/opt/ml/input/config/{debughookconfig,profilerconfig}.json`` (``$SM_INPUT_CONFIG_DIR``,
which the training toolkit exports; smdebug's ``$SMDEBUG_CONFIG_FILE_PATH`` overrides the hook's). A hook
config without smdebug in the image is an error: the rules would evaluate nothing.

The session registers smdebug's PyTorch hook on the model and the loss, so the collections the built-in rules
read (losses, gradients, weights, biases, ReLU inputs/outputs) are saved where SageMaker expects them (the
config's LocalPath, uploaded by the platform). PyTorch names modules by position (``features.0.2``), so the
``.*relu_input``/``.*relu_output`` regexes of the rule configs are extended with the model's ReLU module names.
ReLUs are switched to out-of-place so that their recorded inputs are not overwritten by their outputs.

It also times every training step (data preparation vs compute: from the end of one optimizer step to the
next forward, and from that forward to the end of the step) and runs ``torch.profiler`` over the configured
window of steps (DetailedProfilingConfig StartStep/NumSteps), writing both under the profiler's LocalPath.
"""

from __future__ import annotations

import os

# smdebug's generated protobuf modules only load with the pure-python protobuf runtime; set before any import
# of google.protobuf in this process.
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")

import atexit
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

LOG = logging.getLogger("train_cnn.debugger")

HOOK_CONFIG_ENV = "SMDEBUG_CONFIG_FILE_PATH"
CONFIG_DIR_ENV = "SM_INPUT_CONFIG_DIR"
DEFAULT_CONFIG_DIR = "/opt/ml/input/config"
HOOK_CONFIG_FILE = "debughookconfig.json"
PROFILER_CONFIG_FILE = "profilerconfig.json"
STEP_TIMES_FILE = "step_times.json"
TRACE_FILE = "torch_trace.json"
OPS_FILE = "torch_ops.txt"
SUMMARY_FILE = "torch_profile.json"


def parse_sdk_json(text: str) -> dict[str, Any]:
    """The SDK writes FrameworkProfile settings as JSON with a trailing comma (``{"StartStep": 5, }``)."""
    return json.loads(re.sub(r",\s*}", "}", text))


def profile_window(profiler_config: dict[str, Any]) -> tuple[int, int] | None:
    """(start step, number of steps) of DetailedProfilingConfig, or None when framework profiling is off."""
    if profiler_config.get("DisableProfiler"):
        return None
    detailed = (profiler_config.get("ProfilingParameters") or {}).get("DetailedProfilingConfig")
    if not detailed:
        return None
    settings = parse_sdk_json(detailed) if isinstance(detailed, str) else dict(detailed)
    start, count = int(settings.get("StartStep", 0)), int(settings.get("NumSteps", 1))
    if start < 0 or count < 1:
        raise ValueError(f"DetailedProfilingConfig {settings}: StartStep must be >= 0 and NumSteps >= 1")
    return start, count


def _float32_numpy(make_numpy: Any) -> Any:
    """smdebug turns tensors into numpy arrays with ``.numpy()``, which numpy cannot do for bfloat16 (what the
    layers produce under train_cnn's bfloat16 autocast): widen those to float32 first. Rules read float32."""
    import torch

    def convert(tensor_value: Any) -> Any:
        if isinstance(tensor_value, torch.Tensor) and tensor_value.dtype == torch.bfloat16:
            tensor_value = tensor_value.float()
        return make_numpy(tensor_value)

    return convert


class DebugSession:
    """What train_cnn.train() drives: attach(model, loss_fn), set_mode(mode), step(), record_validation(loss)."""

    def __init__(self, hook_config: Path | None, profiler_dir: Path | None, window: tuple[int, int] | None) -> None:
        self.hook_config = hook_config
        self.profiler_dir = profiler_dir
        self.window = window
        self.hook: Any = None
        self.modes: Any = None
        self.loss_name = ""
        self.mode = "train"
        self.steps = 0  # training steps done
        self.step_start: float | None = None
        self.last_end: float | None = None
        self.timings: list[list[float]] = []  # [step, start (epoch seconds), data seconds, compute seconds]
        self.profiler: Any = None
        self.closed = False

    # --- the seam -----------------------------------------------------------------------------------------
    def attach(self, model: Any, loss_fn: Any) -> None:
        from torch import nn

        relus = [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]
        for module in model.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        if self.hook_config is not None:
            self._create_hook(model, loss_fn, relus)
        if self.profiler_dir is not None:
            model.register_forward_pre_hook(self._forward_started)
        atexit.register(self.close)

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode == "train":
            self.last_end = None  # the gap after validation is not data loading
        if self.hook is not None:
            self.hook.set_mode(self.modes.TRAIN if mode == "train" else self.modes.EVAL)

    def step(self) -> None:
        now = time.perf_counter()
        if self.profiler_dir is not None and self.step_start is not None:
            data = self.step_start - self.last_end if self.last_end is not None else 0.0
            self.timings.append([self.steps, time.time() - (now - self.step_start), round(data, 6),
                                 round(now - self.step_start, 6)])
        self.steps += 1
        self.last_end, self.step_start = time.perf_counter(), None
        if self.window is not None and self.profiler_dir is not None:
            start, count = self.window
            if self.steps == start and self.profiler is None:
                self._start_profiler()
            elif self.steps == start + count and self.profiler is not None:
                self._stop_profiler()

    def record_validation(self, loss: float) -> None:
        """Save the validation loss as the loss tensor of the current EVAL step (Overfit/Overtraining read it)."""
        if self.hook is None:
            return
        import torch

        self.hook.record_tensor_value(self.loss_name, torch.tensor(float(loss)))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.profiler is not None:
            self._stop_profiler()
        if self.profiler_dir is not None:
            self._write(STEP_TIMES_FILE, json.dumps({"columns": ["step", "start", "data_seconds", "compute_seconds"],
                                                     "steps": self.timings}))
        if self.hook is not None:
            self.hook.close()

    # --- internals ------------------------------------------------------------------------------------------
    def _create_hook(self, model: Any, loss_fn: Any, relus: list[str]) -> None:
        from smdebug.pytorch import Hook, modes  # importable: checked by session_from_env

        self.modes = modes
        self.hook = Hook.create_from_json_file(str(self.hook_config))
        self.hook._make_numpy_array = _float32_numpy(self.hook._make_numpy_array)
        names = "|".join(re.escape(name) for name in relus)
        if names:
            # smdebug names a module's tensors <module>_input_<i> / <module>_output_<i>.
            self.hook.get_collection("relu_input").include(f"^({names})_input_0$")
            self.hook.get_collection("relu_output").include(f"^({names})_output_0$")
        self.hook.register_module(model)
        self.hook.register_loss(loss_fn)
        self.loss_name = loss_fn._get_name()  # record_tensor_value appends _output_0, as the loss hook does

    def _forward_started(self, module: Any, inputs: Any) -> None:
        if self.mode == "train" and module.training:
            self.step_start = time.perf_counter()

    def _start_profiler(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=False, with_stack=False)
        self.profiler.__enter__()
        self.profile_began = time.perf_counter()

    def _stop_profiler(self) -> None:
        profiler, self.profiler = self.profiler, None
        profiler.__exit__(None, None, None)
        seconds = time.perf_counter() - self.profile_began
        assert self.profiler_dir is not None and self.window is not None
        self.profiler_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.profiler_dir / f".{TRACE_FILE}.tmp"
        profiler.export_chrome_trace(str(tmp))
        os.replace(tmp, self.profiler_dir / TRACE_FILE)
        averages = profiler.key_averages()
        self._write(OPS_FILE, averages.table(sort_by="self_cpu_time_total", row_limit=25))
        top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        self._write(SUMMARY_FILE, json.dumps({
            "start_step": self.window[0], "num_steps": self.window[1], "wall_seconds": round(seconds, 4),
            "top_ops": [{"name": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1000, 3),
                         "cpu_total_ms": round(e.cpu_time_total / 1000, 3)} for e in top]}, indent=2))

    def _write(self, name: str, text: str) -> None:
        assert self.profiler_dir is not None
        self.profiler_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.profiler_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.profiler_dir / name)


def require_smdebug() -> None:
    """The hook needs smdebug; without it the job must fail, not train with the rules evaluating nothing."""
    try:
        import smdebug.pytorch  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"the job has a Debugger hook config (DebugHookConfig) but smdebug cannot be imported "
                         f"({exc}): the image must install it (the bundle's requirements.txt pins it)") from exc


def session_from_env(env: Any = None, environ: dict[str, str] | None = None) -> DebugSession | None:
    """The job's DebugSession, or None when neither Debugger nor the profiler was configured."""
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
            profiler_dir = Path(local) if local else Path(output_dir) / "profiler"
            profiler_dir = profiler_dir / "framework"
            window = profile_window(config)
    if hook_config is None and profiler_dir is None:
        return None
    return DebugSession(hook_config, profiler_dir, window)
