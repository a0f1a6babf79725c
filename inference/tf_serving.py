"""TensorFlow Serving's REST predict API, in process: what sits between input_handler and output_handler.

SageMaker's TensorFlow Serving container runs ``tensorflow_model_server`` beside its Python service; the service
posts each input_handler result to ``/v1/models/<name>:predict`` and hands the response to output_handler. Here
the SavedModel is loaded with TensorFlow in this process and :class:`SavedModelServer` answers the same request
bodies with the same response bodies, for the REST API's two request forms:

- row form ``{"instances": [...]}`` (each instance one example, or an object of named inputs) -> ``{"predictions":
  [...]}``;
- columnar form ``{"inputs": value}`` (or an object of named inputs; the batch is the first dimension) ->
  ``{"outputs": value}``;

with an optional ``"signature_name"`` (default ``serving_default``). A signature with one output omits its name,
as TF Serving does. A request TF Serving would refuse gets its status 400 and ``{"error": "..."}``.

:class:`TensorFlowModel` puts the three together for the local endpoint and evaluate.py: the model's own
``code/inference.py`` (imported from the model folder, as the container imports it), this server, and the model's
``model_config.json``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
DEFAULT_SIGNATURE = "serving_default"
JSON_TYPE = "application/json"


class TFServingError(Exception):
    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass
class Response:
    """The part of ``requests.Response`` output handlers read: status_code, content, text, json()."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def saved_model_path(model_dir: str | os.PathLike[str]) -> Path:
    """The newest numeric version folder holding saved_model.pb (TF Serving's default version policy)."""
    root = Path(model_dir)
    versions = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()
                       and (p / "saved_model.pb").is_file()), key=lambda p: int(p.name)) if root.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{root}: no SavedModel version folder (<model>/1/saved_model.pb) for TF Serving")
    return versions[-1]


class SavedModelServer:
    """One SavedModel's signatures behind TF Serving's REST predict request and response bodies."""

    def __init__(self, model_dir: str | os.PathLike[str], threads: int | None = None) -> None:
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # TensorFlow already running in this process
                pass
        self.tf = tf
        self.path = saved_model_path(model_dir)
        self.loaded = tf.saved_model.load(str(self.path))
        self.signatures = dict(self.loaded.signatures)
        if DEFAULT_SIGNATURE not in self.signatures:
            raise ValueError(f"{self.path}: no {DEFAULT_SIGNATURE} signature (has {sorted(self.signatures)})")

    def _signature(self, name: str | None) -> Any:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise TFServingError(f"Serving signature key \"{name}\" not found.")
        return self.signatures[name]

    def inputs(self, signature: str | None = None) -> dict[str, Any]:
        return self._signature(signature).structured_input_signature[1]

    def _tensor(self, name: str, value: Any, spec: Any) -> Any:
        try:
            array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
        except (TypeError, ValueError) as exc:
            raise TFServingError(f"Failed to process element: {name} of 'instances' list. Error: {exc}") from None
        if not spec.shape.is_compatible_with(array.shape):
            raise TFServingError(f"input {name}: shape {list(array.shape)} is not compatible with the signature's "
                                 f"{spec.shape.as_list()}")
        return array

    def parse(self, body: bytes | str) -> tuple[str, str | None, dict[str, np.ndarray]]:
        """(form "row" or "columnar", signature name, named input arrays) of a predict request body."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TFServingError(f"JSON Parse error: {exc}") from None
        if not isinstance(request, dict):
            raise TFServingError("JSON Value: not an object. Expected an object with 'instances' or 'inputs'.")
        if ("instances" in request) == ("inputs" in request):
            raise TFServingError("JSON Value: must have exactly one of 'instances' (row format) or 'inputs' "
                                 "(columnar format)")
        signature = request.get("signature_name")
        specs = self.inputs(signature)
        if "instances" in request:
            instances = request["instances"]
            if not isinstance(instances, list) or not instances:
                raise TFServingError("'instances' must be a non-empty list")
            if isinstance(instances[0], dict):
                values = {name: [row.get(name) for row in instances] for name in specs}
            elif len(specs) == 1:
                values = {next(iter(specs)): instances}
            else:
                raise TFServingError(f"the signature has {len(specs)} inputs: each instance must name them")
            form = "row"
        else:
            inputs = request["inputs"]
            if isinstance(inputs, dict):
                values = {name: inputs.get(name) for name in specs}
            elif len(specs) == 1:
                values = {next(iter(specs)): inputs}
            else:
                raise TFServingError(f"the signature has {len(specs)} inputs: 'inputs' must name them")
            form = "columnar"
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise TFServingError(f"missing input(s) {missing} for signature {signature or DEFAULT_SIGNATURE}")
        return form, signature, {name: self._tensor(name, value, specs[name]) for name, value in values.items()}

    def run(self, arrays: dict[str, np.ndarray], signature: str | None = None) -> dict[str, np.ndarray]:
        function = self._signature(signature)
        try:
            outputs = function(**{name: self.tf.constant(value) for name, value in arrays.items()})
        except (self.tf.errors.InvalidArgumentError, ValueError, TypeError) as exc:
            raise TFServingError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        return {name: np.asarray(value) for name, value in outputs.items()}

    @staticmethod
    def format(form: str, outputs: dict[str, np.ndarray]) -> bytes:
        names = sorted(outputs)
        if form == "columnar":
            body: Any = {"outputs": outputs[names[0]].tolist() if len(names) == 1 else
                         {name: outputs[name].tolist() for name in names}}
        elif len(names) == 1:
            body = {"predictions": outputs[names[0]].tolist()}
        else:
            rows = len(next(iter(outputs.values())))
            body = {"predictions": [{name: outputs[name][i].tolist() for name in names} for i in range(rows)]}
        return json.dumps(body).encode("utf-8")

    def predict(self, body: bytes | str) -> Response:
        """POST /v1/models/<name>:predict with ``body``."""
        try:
            form, signature, arrays = self.parse(body)
            return Response(200, self.format(form, self.run(arrays, signature)))
        except TFServingError as exc:
            return Response(exc.status_code, json.dumps({"error": str(exc)}).encode("utf-8"))


def load_handlers(model_dir: str | os.PathLike[str]) -> ModuleType:
    """The model's ``code/inference.py``, imported from its file as the TF Serving container does; without one,
    this project's inference.py."""
    script = Path(model_dir) / "code" / "inference.py"
    if not script.is_file():
        from inference import inference

        return inference
    name = f"_model_inference_{abs(hash(str(script.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    for handler in ("input_handler", "output_handler"):
        if not hasattr(module, handler):
            raise ValueError(f"{script}: no {handler}; the TensorFlow Serving container needs input_handler and "
                             "output_handler (or handler)")
    return module


class TensorFlowModel:
    """A TensorFlow model folder served as the container serves it: handlers + TF Serving + model_config.json."""

    framework = "tensorflow"

    def __init__(self, model_dir: str | os.PathLike[str], threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.handlers = load_handlers(self.model_dir)
        self.config = self.handlers.read_config(str(self.model_dir))
        if self.config["framework"] != "tensorflow":
            raise ValueError(f"{self.model_dir}: framework {self.config['framework']!r}, not a TensorFlow model")
        self.server = SavedModelServer(self.model_dir, threads)
        self.num_classes = int(self.config["num_classes"])
        names = self.config.get("class_names") or [str(i) for i in range(self.num_classes)]
        self.class_names = [str(n) for n in names]
        self.image_shape = tuple(int(d) for d in self.config.get("image_shape", (28, 28)))
        self.errors: tuple[type[BaseException], ...] = tuple({self.handlers.InferenceError, _own_error()})
        outputs = self.server._signature(None).structured_outputs
        self.output_name = min(outputs)

    def server_rows(self, pixels: np.ndarray) -> np.ndarray:
        """serving_default's (only) output for a batch of its (only) input: what dynamic batching runs."""
        name = next(iter(self.server.inputs()))
        return self.server.run({name: pixels})[self.output_name]

    def context(self, content_type: str | None, accept: str | None, content_length: int | None = None) -> Any:
        return self.handlers.make_context(content_type, accept, content_length)

    def invoke(self, body: bytes, content_type: str | None, accept: str | None = None) -> tuple[str, str]:
        """One request through input_handler -> TF Serving predict -> output_handler."""
        context = self.context(content_type, accept, len(body))
        request = self.handlers.input_handler(io.BytesIO(body), context)
        return self.handlers.output_handler(self.server.predict(request), context)

    def predict_classes(self, pixels: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Predicted class of each image (raw 0..255 pixels), every batch sent as a .npy request body."""
        predicted = []
        for start in range(0, len(pixels), batch):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(pixels[start:start + batch], dtype=np.float32), allow_pickle=False)
            text, _ = self.invoke(buffer.getvalue(), "application/x-npy", JSON_TYPE)
            answer = json.loads(text)
            rows = answer.get("predictions", [answer])
            predicted.extend(int(row["predicted_class"]) for row in rows)
        return np.asarray(predicted, dtype=np.int64)


def _own_error() -> type[BaseException]:
    from inference.inference import InferenceError

    return InferenceError
