"""SageMaker inference handlers for the image classifiers (CNN and XGBoost baseline), any size and colour.

Implements the SageMaker inference toolkit contract, so the same file serves inside SageMaker's PyTorch
inference container (as ``code/inference.py`` in model.tar.gz) and in our local endpoint:

    model_fn(model_dir) -> model
    input_fn(body, content_type) -> Batch: the request as decoded (numbers as sent, or one decoded image)
    predict_fn(batch, model) -> Prediction (class probabilities); it calls model_input(batch, model), which
        fits the request to the model's input: raw pixels 0..255, float32, (N, *image_shape)
    output_fn(prediction, accept) -> (JSON text, "application/json")

The toolkit's input_fn does not receive the model, so everything that depends on it (the shape an array must
have, how an image is read, normalisation) happens in model_input and predict_fn; our endpoint calls
model_input itself before batching requests together.

Request bodies (pixels are intensities 0..255; C, H, W are the model's channels and size, image_shape in
model_config.json):
- application/json: nested lists or {"instances": [...]}; application/x-npy: a numpy .npy array (no pickles).
  One image is (H, W) for a grayscale model, (C, H, W) or (H, W, C) for a colour one (and (H, W, 1) for
  grayscale), or H*W*C numbers in channel-first order -> one answer; a batch is (N, H, W), (N, C, H, W),
  (N, H, W, C) or (N, H*W*C) -> {"predictions": [...]}. Any other shape is a 400 listing the shapes the model
  accepts.
- text/csv: one image per row of H*W*C values (the XGBoost container's format); always a batch answer.
- image/png, image/jpeg, webp, bmp, tiff: any size and colour. For a digit model (28x28 grayscale, trained on
  IDX data such as MNIST) converted the way MNIST was made: grayscale, polarity fixed (a light background is
  inverted), alpha composited, and, unless already 28x28, cropped to the ink, fitted into 20x20 and centred by
  centre of mass in 28x28. Any other model reads the image the way its training job read its image folder
  (training/formats.py): converted to RGB or L, bilinear resize to the model's size.
Normalisation (scale, mean, std) comes from model_config.json and is applied in predict_fn; XGBoost models of
large images then area-downsample their input the way their training job did (``xgboost_input``,
training/features.py, shipped as code/features.py).

Errors are :class:`InferenceError` carrying an HTTP status (400 bad input, 406 bad Accept, 413 too large,
415 unsupported type); inside the SageMaker container they subclass the toolkit's
GenericInferenceToolkitError so the container answers with that status too.

The same file is the ``code/inference.py`` of a TensorFlow model (training/train_keras.py), for SageMaker's
TensorFlow Serving container, whose contract is a pair of handlers around TF Serving's REST predict API:

    input_handler(data, context) -> TF Serving request body (JSON text)
    output_handler(response, context) -> (JSON text, "application/json")

``data`` is the request stream, ``context`` the container's Context (``request_content_type``,
``accept_header``, ...). input_handler decodes the body with input_fn and fits it with model_input (the same
content types, any-size/colour images and errors as a PyTorch model) and sends raw pixels; the SavedModel
normalizes them itself. A single image goes in TF Serving's columnar form
(``{"inputs": ...}``, answered ``{"outputs": ...}``), a batch in its row form (``{"instances": ...}``, answered
``{"predictions": ...}``), so output_handler knows which answer to give without shared state. Class names and
the image shape come from ``model_config.json`` beside ``code/`` (``/opt/ml/model`` in the container). The real
container answers 500 for any exception a handler raises; our local endpoint answers an InferenceError's status.
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import json
import math
import os
import re
import warnings
from collections import namedtuple
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

try:  # lets SageMaker's inference toolkit answer with our status code instead of 500
    from sagemaker_inference.errors import GenericInferenceToolkitError as _ErrorBase
except ImportError:
    _ErrorBase = Exception

MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker real-time endpoints' payload limit
MAX_BATCH = 1024
MAX_IMAGE_PIXELS = 4096 * 4096  # larger images are refused before their pixels are decoded
TOP_K = int(os.environ.get("MLOPS_TOP_K", "3"))
CONFIG_FILE = "model_config.json"
TORCH_WEIGHTS = "model.pth"
XGBOOST_MODEL = "xgboost-model.json"
FRAMEWORKS = ("pytorch", "xgboost", "tensorflow")
TF_CONTAINER_MODEL_DIR = "/opt/ml/model"  # where SageMaker's TensorFlow Serving container unpacks model.tar.gz
JSON_TYPE = "application/json"
MAX_JSON_DEPTH = 8  # {"instances": [batch [rows [columns [channels]]]]} is 5 deep; deeper is never an image
# Numbers and lists a JSON body may hold, counted before parsing. 2**21 is what a 6 MB body holds at 3 bytes a
# number ("12,"): 682 images of 3x32x32 or 2,674 of 28x28, more than a body of real pixel values (about 3.6 bytes a
# number) can carry; only a batch of mostly one-digit values could be longer, and .npy carries such batches.
MAX_JSON_ELEMENTS = 2 ** 21
DIGIT_SHAPE = (28, 28)  # digit models (IDX data such as MNIST) get MNIST's own recipe for images
# Pillow format per media type; Pillow must read the format (WebP needs libwebp, TIFF libtiff for some codecs).
IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP",
               "image/bmp": "BMP", "image/x-ms-bmp": "BMP", "image/tiff": "TIFF"}
SUPPORTED_TYPES = ("application/json", "application/x-npy", "text/csv", "image/png", "image/jpeg", "image/webp",
                   "image/bmp", "image/tiff")

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow's own guard, for any other decoding path
# Pillow warns just above the limit; _from_image refuses those images itself (413), so the warning is noise.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class InferenceError(_ErrorBase):
    """A request the handlers refuse, with the HTTP status to answer."""

    def __init__(self, status_code: int, message: str) -> None:
        if _ErrorBase is Exception:
            super().__init__(message)
        else:  # pragma: no cover - only inside the toolkit
            super().__init__(status_code, message)
        self.status_code = status_code
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class Batch:
    """A request as decoded, before :func:`model_input` fits it to a model.

    Numbers (JSON, .npy, CSV) are ``pixels``: float32 0..255, checked to be finite and in range, in the shape
    they were sent. An image is ``image``: decoded (its pixel count checked from the header first) but not yet
    converted, because how it is read depends on the model. ``single`` says whether the answer is one object
    rather than a list; for arrays only the model's shape can tell, so model_input settles it.
    """

    pixels: np.ndarray | None = None
    single: bool = False
    image: Image.Image | None = None
    media_type: str = ""
    body: bytes | None = dataclass_field(default=None, repr=False)  # an image's bytes, to decode it again
    drafted: bool = False  # a large JPEG decoded at reduced scale (cheap for digits; decoded in full otherwise)


@dataclass
class Prediction:
    probabilities: np.ndarray  # (N, num_classes)
    class_names: list[str]
    single: bool


# -- model ------------------------------------------------------------------------------------------------------

class LoadedModel:
    """A network (or booster) plus what model_config.json says about its input."""

    def __init__(self, config: dict[str, Any], predictor: Any, framework: str) -> None:
        self.config = config
        self.framework = framework
        self.predictor = predictor
        self.num_classes = int(config["num_classes"])
        names = config.get("class_names") or [str(i) for i in range(self.num_classes)]
        self.class_names = [str(n) for n in names]
        self.image_shape = tuple(int(d) for d in config.get("image_shape", DIGIT_SHAPE))
        if len(self.image_shape) not in (2, 3):
            raise ValueError(f"image_shape {list(self.image_shape)}: expected [H, W] or [C, H, W]")
        self.height, self.width = self.image_shape[-2:]
        default_channels = self.image_shape[0] if len(self.image_shape) == 3 else 1
        self.channels = int(config.get("in_channels", default_channels))
        if self.channels != default_channels:
            raise ValueError(f"in_channels {self.channels} does not match image_shape {list(self.image_shape)}")
        self.data_format = str(config.get("data_format", "idx"))  # models from before data_format was recorded: IDX
        # MNIST's recipe is for digits: 28x28 grayscale models of IDX data; others read images like their training.
        self.digit_input = self.image_shape == DIGIT_SHAPE and self.data_format == "idx"
        self.xgboost_input = config.get("xgboost_input") if framework == "xgboost" else None
        self._features = _xgboost_features() if self.xgboost_input else None
        norm = config.get("normalization") or {}
        self.scale = float(norm.get("scale", 1 / 255))
        self.mean = float(norm.get("mean", 0.0))
        self.std = float(norm.get("std", 1.0))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        return ((pixels * self.scale - self.mean) / self.std).astype(np.float32, copy=False)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N, num_classes) for raw pixels in the model's layout: (N, H, W) or (N, C, H, W)."""
        x = self.normalise(pixels)
        if self.framework == "xgboost":
            rows = self._features(x, self.xgboost_input) if self._features else x.reshape(len(x), -1)
            out = np.asarray(self.predictor.inplace_predict(rows), dtype=np.float64)
            if out.ndim == 1:  # multi:softmax gives labels, not probabilities
                probs = np.zeros((len(out), self.num_classes))
                probs[np.arange(len(out)), out.astype(int)] = 1.0
                return probs
            return out
        import torch

        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(x))
            tensor = tensor.unsqueeze(1) if tensor.ndim == 3 else tensor.contiguous(memory_format=torch.channels_last)
            logits = self.predictor(tensor)
            return torch.softmax(logits.float(), dim=1).numpy()


_PILLOW_BUFFER = re.compile(r"<_io\.BytesIO object at 0x[0-9a-f]+>")


def _xgboost_features() -> Any:
    """training/features.py's xgboost_features: code/features.py inside SageMaker's container."""
    try:
        from features import xgboost_features
    except ImportError:  # the source tree
        from training.features import xgboost_features
    return xgboost_features


def read_config(model_dir: str) -> dict[str, Any]:
    path = os.path.join(model_dir, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: the model directory must hold {CONFIG_FILE}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise TypeError(f"{path}: expected a JSON object, got {type(config).__name__}")
    for field in ("framework", "num_classes"):
        if field not in config:
            raise ValueError(f"{path}: missing field {field!r}")
    if config["framework"] not in FRAMEWORKS:
        raise ValueError(f"{path}: framework {config['framework']!r} is not one of {', '.join(FRAMEWORKS)}")
    names = config.get("class_names")
    if names is not None and len(names) != int(config["num_classes"]):
        raise ValueError(f"{path}: {len(names)} class_names for num_classes={config['num_classes']}")
    return config


def _fuse_for_inference(module: Any) -> Any:
    """Fold BatchNorm into the preceding convolution and drop Dropout: same outputs, fewer ops per request."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        _fuse_for_inference(child)
    if isinstance(module, nn.Sequential):
        layers = list(module)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.modules.dropout._DropoutNd):  # Dropout, Dropout2d, ...: identity in eval
                module[i] = nn.Identity()
            elif isinstance(layer, nn.BatchNorm2d) and i > 0 and isinstance(layers[i - 1], nn.Conv2d):
                module[i - 1] = fuse_conv_bn_eval(layers[i - 1], layer)
                module[i] = nn.Identity()
    return module


def _compile_for_inference(net: Any, shape: list[int]) -> Any:
    """Channels-last weights, TorchScript-frozen, when that gives the same answers.

    CPU time per image of the compact CNN, 1 torch thread, batch 1/8/32 (benchmarks/bench_forward.py): eager
    232/173/145 us, frozen NCHW 150/158/141 us, frozen channels-last 160/78/65 us, so dynamic batches pay off.
    torch.jit is deprecated upstream, so any failure (or MLOPS_TORCHSCRIPT=0) keeps the eager network.
    """
    if os.environ.get("MLOPS_TORCHSCRIPT", "1") == "0":
        return net
    import torch

    try:
        channels = int(shape[0]) if len(shape) == 3 else 1
        probe = torch.rand(3, channels, int(shape[-2]), int(shape[-1]))
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = net(probe)
            last = copy.deepcopy(net).to(memory_format=torch.channels_last)
            frozen = torch.jit.freeze(torch.jit.trace(last, probe[:1].contiguous(memory_format=torch.channels_last)))
            for batch in (probe[:1], probe):  # traced once, must hold for any batch size and either layout
                for layout in (batch, batch.contiguous(memory_format=torch.channels_last)):
                    if not torch.allclose(frozen(layout), expected[: len(batch)], atol=1e-5, rtol=1e-4):
                        return net
        return frozen
    except Exception:  # noqa: BLE001 - optimisation only: the eager network is always correct
        return net


def model_fn(model_dir: str) -> LoadedModel:
    """Load the model that model_config.json describes; weights never go through pickle."""
    config = read_config(model_dir)
    if config["framework"] == "tensorflow":
        raise ValueError(f"{model_dir}: a TensorFlow SavedModel is served by TensorFlow Serving through "
                         "input_handler/output_handler, not loaded by model_fn")
    if config["framework"] == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(os.path.join(model_dir, XGBOOST_MODEL))
        booster.set_param({"nthread": 1})
        return LoadedModel(config, booster, "xgboost")
    import torch

    try:  # inside SageMaker's container only code/ is on the path: models.py is a copy of training/models.py
        from models import build_model
    except ImportError:  # the source tree; imported here because it needs torch, which XGBoost's image lacks
        from training.models import build_model

    shape = config.get("image_shape", [28, 28])  # [H, W] grayscale or [C, H, W]
    channels = int(config.get("in_channels", shape[0] if len(shape) == 3 else 1))
    net = build_model(config.get("architecture", "compact"), int(config["num_classes"]),
                      kernel_size=int(config.get("kernel_size", 3)), width=config.get("width"),
                      dropout=config.get("dropout"), in_channels=channels, image_size=int(shape[-1]),
                      normalization=config.get("normalization"))  # resnet18 undoes it, then applies ImageNet's
    state = torch.load(os.path.join(model_dir, TORCH_WEIGHTS), map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    return LoadedModel(config, _compile_for_inference(_fuse_for_inference(net), shape), "pytorch")


# -- input ------------------------------------------------------------------------------------------------------

def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _numbers(array: np.ndarray, what: str) -> np.ndarray:
    """The request's numbers as float32 pixels, in the shape sent: numeric, finite, 0..255, not empty."""
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InferenceError(400, f"{what}: expected numbers, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise InferenceError(400, f"{what}: complex numbers are not pixels")
    if array.size == 0:
        raise InferenceError(400, f"{what}: empty array of shape {array.shape}: no images")
    pixels = array.astype(np.float32)
    if not np.isfinite(pixels).all():
        raise InferenceError(400, f"{what}: contains NaN or infinite values")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise InferenceError(400, f"{what}: pixel values must lie in 0..255, got {low:g}..{high:g}")
    return pixels


def _json_structure(body: bytes) -> tuple[int, int]:
    """(nesting depth, separators) of a JSON text outside its strings, counted without parsing it.

    Vectorised so a 6 MB body costs milliseconds; lets a 10,000-deep or 3-million-element body be refused
    before the parser recurses or allocates. Escapes are dropped first (a backslash outside a string is
    invalid JSON anyway, so that cannot hide a bracket).
    """
    text = np.frombuffer(body.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    outside = (np.cumsum(text == ord('"')) % 2) == 0
    step = np.zeros(len(text), dtype=np.int32)
    step[(text == ord("[")) | (text == ord("{"))] = 1
    step[(text == ord("]")) | (text == ord("}"))] = -1
    step[~outside] = 0
    depth = int(np.cumsum(step).max(initial=0))
    separators = int(np.count_nonzero(outside & (text == ord(","))))
    return depth, separators


_NUMBERS_ONLY = object()


def _first_non_number(obj: Any) -> Any:
    """The first leaf that is not a JSON number (bools and null count as not numbers), else _NUMBERS_ONLY."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return item
    return _NUMBERS_ONLY


def _from_json(body: bytes) -> Batch:
    depth, separators = _json_structure(body)
    if depth > MAX_JSON_DEPTH:
        raise InferenceError(400, f"application/json: nested {depth} levels deep; expected at most {MAX_JSON_DEPTH} "
                                  "(an image is its rows of pixels as nested lists, a batch one more level)")
    if separators + 1 > MAX_JSON_ELEMENTS:
        raise InferenceError(413, f"application/json: {separators + 1} elements exceeds the limit of "
                                  f"{MAX_JSON_ELEMENTS}; send large batches as application/x-npy")
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InferenceError(400, f"application/json body is not valid JSON: {exc}") from None
    if isinstance(obj, dict):
        key = next((k for k in ("instances", "inputs", "image", "images") if k in obj), None)
        if key is None:
            raise InferenceError(400, "application/json object needs one of the keys instances, inputs, image, "
                                      f"images; got keys {sorted(obj)[:5]}")
        obj = obj[key]
    bad = _first_non_number(obj)
    if bad is not _NUMBERS_ONLY:
        kind = {str: "string", bool: "boolean", dict: "object", type(None): "null"}.get(type(bad), type(bad).__name__)
        raise InferenceError(400, f"application/json: pixel values must be JSON numbers 0..255, got a {kind} "
                                  f"({json.dumps(bad)[:40]})")
    try:
        array = np.asarray(obj, dtype=np.float32)
    except (ValueError, TypeError):
        raise InferenceError(400, "application/json: expected nested lists of numbers with a regular shape "
                                  "(an image's rows of pixels, or a batch of images)") from None
    return Batch(_numbers(array, "application/json"), media_type="application/json")


def _npy_header(body: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) from a .npy header, read without touching the data."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unknown .npy version {version}")
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with ast/tokenize: any error means "bad header"
        raise InferenceError(400, f"application/x-npy: not a .npy file (expected numpy.save output): {exc}") from None
    return tuple(int(d) for d in shape), dtype, stream.tell()


def _from_npy(body: bytes) -> Batch:
    shape, dtype, offset = _npy_header(body)
    if dtype.hasobject:
        raise InferenceError(400, f"application/x-npy: dtype {dtype} holds Python objects (pickles are refused); "
                                  "expected a numeric dtype")
    declared = math.prod(shape) * dtype.itemsize  # Python ints: no overflow for absurd shapes
    if declared > MAX_BODY_BYTES:
        raise InferenceError(413, f"application/x-npy: header declares shape {shape} of {dtype} = {declared} bytes, "
                                  f"over the payload limit of {MAX_BODY_BYTES}")
    if declared != len(body) - offset:
        raise InferenceError(400, f"application/x-npy: header declares {declared} bytes of data (shape {shape}, "
                                  f"{dtype}) but {len(body) - offset} follow it")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - the header was checked; anything left is a malformed file
        raise InferenceError(400, f"application/x-npy: cannot load array without pickle: {exc}") from None
    return Batch(_numbers(array, "application/x-npy"), media_type="application/x-npy")


def _from_csv(body: bytes) -> Batch:
    try:
        text = body.decode("utf-8")
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
        widths = {len(row) for row in rows}
        if len(widths) > 1:
            raise InferenceError(400, f"text/csv: rows have different lengths {sorted(widths)}; expected one image "
                                      "of equal length per row")
        array = np.array(rows, dtype=np.float32)
    except UnicodeDecodeError:
        raise InferenceError(400, "text/csv body is not UTF-8 text") from None
    except csv.Error as exc:
        raise InferenceError(400, f"text/csv: malformed CSV (expected rows of pixel values): {exc}") from None
    except ValueError as exc:
        raise InferenceError(400, f"text/csv: non-numeric value: {exc}") from None
    if array.ndim != 2:
        raise InferenceError(400, f"text/csv: expected rows of pixel values, got shape {array.shape}")
    return Batch(_numbers(array, "text/csv"), media_type="text/csv")


def _mnist_layout(gray: np.ndarray) -> np.ndarray:
    """MNIST's own recipe for an image of any size: crop to the ink, fit into 20x20, centre of mass at 14,14."""
    ink = gray - _median(_border(gray))
    ink = np.clip(ink, 0, None)
    peak = float(ink.max())
    if peak <= 0:
        return np.zeros((28, 28), dtype=np.float32)
    ink = ink * (255.0 / peak)
    rows = np.flatnonzero((ink > 0.2 * 255).any(axis=1))
    cols = np.flatnonzero((ink > 0.2 * 255).any(axis=0))
    crop = ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    h, w = crop.shape
    factor = 20.0 / max(h, w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    fitted = np.asarray(Image.fromarray(crop.astype(np.float32), mode="F").resize(size, Image.Resampling.LANCZOS))
    fitted = np.clip(fitted, 0, 255)
    canvas = np.zeros((28, 28), dtype=np.float32)
    total = float(fitted.sum())
    ys, xs = np.indices(fitted.shape)
    cy = float((ys * fitted).sum() / total) if total else fitted.shape[0] / 2
    cx = float((xs * fitted).sum() / total) if total else fitted.shape[1] / 2
    top = int(np.clip(round(14 - cy), 0, 28 - fitted.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - fitted.shape[1]))
    canvas[top: top + fitted.shape[0], left: left + fitted.shape[1]] = fitted
    return canvas


def _open_image(body: bytes, media_type: str, draft: bool = True) -> tuple[Image.Image, bool]:
    """Parse the header, refuse too many pixels, then decode (the first frame of an animation).

    Returns the image and whether it was drafted: a JPEG over 512 pixels a side decoded at 1/2..1/8 scale.
    """
    expected = IMAGE_TYPES[media_type]
    drafted = False
    try:
        image = Image.open(io.BytesIO(body), formats=[expected])  # parses the header only
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InferenceError(413, f"{media_type}: {width}x{height} pixels exceeds the limit of "
                                      f"{MAX_IMAGE_PIXELS} pixels (decompression bomb guard)")
        if draft and expected == "JPEG" and min(width, height) > 512 and image.mode in ("L", "RGB"):
            image.draft(image.mode, (256, 256))  # JPEG decodes at 1/2..1/8 scale: big photos stay cheap
            drafted = image.size != (width, height)
        image.load()
    except InferenceError:
        raise
    except Image.DecompressionBombError as exc:
        raise InferenceError(413, f"{media_type}: refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt data; all mean "bad image"
        reason = _PILLOW_BUFFER.sub("", str(exc)).strip()  # Pillow names the buffer "<_io.BytesIO object at 0x...>"
        raise InferenceError(400, f"{media_type}: cannot decode the image as {expected} "
                                  f"({len(body)} bytes, starting {body[:8]!r}): {reason}") from None
    return image, drafted


def _luminance(image: Image.Image) -> np.ndarray:
    """Grey levels 0..255 (float32) of an image without alpha, whatever its mode and bit depth."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float32)
        if image.mode != "I" or float(values.max(initial=0)) > 255:  # 16-bit samples: 65535 is white
            values = values / 257.0
        return np.clip(values, 0, 255)
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return np.clip(values * 255.0 if float(values.max(initial=0)) <= 1.0 else values, 0, 255)
    if image.mode != "L":
        image = image.convert("L")  # RGB, CMYK, YCbCr, P, 1: ITU-R 601 luma
    return np.asarray(image, dtype=np.float32)


def _alpha(image: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
    """Split off the alpha channel (0..1), if the image has one or a palette/colour-key transparency."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if not has_alpha:
        return image, None
    rgba = image.convert("RGBA")
    return rgba.convert("RGB"), np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0


def _border(gray: np.ndarray) -> np.ndarray:
    if min(gray.shape) <= 2:
        return gray.reshape(-1)
    return np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])


def _median(values: np.ndarray) -> float:
    """Median via one partition (np.median costs ~10x more on a request's hot path)."""
    values = values.reshape(-1)
    middle = len(values) // 2
    return float(np.partition(values, middle)[middle])


def _ink(image: Image.Image) -> np.ndarray:
    """MNIST polarity (white ink on black, 0..255) for any mode, bit depth and kind of transparency.

    A transparent background (the border mostly transparent, as canvas and drawing apps export) holds no
    colour of its own: the stroke is what is opaque, in any colour. The image is composited onto the
    background the stroke is not (black for a light stroke, white for a dark one) and the ink is the distance
    from that background, so semi-transparent anti-aliased edges become grey edges as in MNIST. An image whose
    border is opaque is composited onto white (its transparent holes are paper) and its polarity decided from
    the border, like an image without alpha.
    """
    colour, alpha = _alpha(image)
    gray = _luminance(colour)
    if alpha is not None and _median(_border(alpha)) < 0.5:
        weight = float(alpha.sum())
        stroke = float((gray * alpha).sum() / weight) if weight else 255.0
        background = 0.0 if stroke > 127.5 else 255.0
        ink = alpha * np.abs(gray - background)
        peak = float(ink.max(initial=0))
        return np.clip(ink * (255.0 / peak), 0, 255) if peak > 0 else ink  # rounding can overshoot 255
    if alpha is not None:
        gray = alpha * gray + (1.0 - alpha) * 255.0
    if _median(_border(gray)) > 127:
        gray = 255.0 - gray  # MNIST polarity: white digit on black
    return gray


def _from_image(body: bytes, media_type: str) -> Batch:
    image, drafted = _open_image(body, media_type)
    return Batch(image=image, single=True, media_type=media_type, body=body, drafted=drafted)


def input_fn(request_body: bytes | str, content_type: str | None) -> Batch:
    """Decode one request body into raw pixels; refuse anything else with a status and a reason."""
    if isinstance(request_body, str):
        request_body = request_body.encode("utf-8")
    body = bytes(request_body)
    if len(body) > MAX_BODY_BYTES:
        raise InferenceError(413, f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
    if not body:
        raise InferenceError(400, "empty request body")
    media_type = _media_type(content_type)
    if media_type == "application/json":
        return _from_json(body)
    if media_type == "application/x-npy":
        return _from_npy(body)
    if media_type == "text/csv":
        return _from_csv(body)
    if media_type in IMAGE_TYPES:
        return _from_image(body, media_type)
    if media_type.startswith("image/"):
        raise InferenceError(415, f"unsupported image type {content_type!r}; images are accepted as "
                                  f"{', '.join(t for t in SUPPORTED_TYPES if t.startswith('image/'))}")
    raise InferenceError(415, f"unsupported content type {content_type!r}; expected one of {', '.join(SUPPORTED_TYPES)}")


# -- fitting a request to the model ------------------------------------------------------------------------------

def _digit_pixels(batch: Batch) -> np.ndarray:
    """MNIST's recipe: (1, 28, 28) white ink on black, composited, cropped to the ink and centred by mass."""
    image = batch.image
    if IMAGE_TYPES[batch.media_type] == "JPEG":
        try:
            image = ImageOps.exif_transpose(image)  # phone photos carry their rotation in EXIF
        except Exception as exc:  # noqa: BLE001 - a corrupt EXIF block is a bad image, not a server fault
            raise InferenceError(400, f"{batch.media_type}: cannot apply the image's EXIF orientation: {exc}") from None
    gray = _ink(image).astype(np.float32, copy=False)
    if gray.shape != DIGIT_SHAPE:
        gray = _mnist_layout(gray)
    return np.ascontiguousarray(gray).reshape(1, *DIGIT_SHAPE)


def _training_pixels(batch: Batch, model: LoadedModel) -> np.ndarray:
    """The image read the way the training job read its image folder (training/formats.py ``_load_image``):
    converted to RGB or L (alpha dropped, no EXIF rotation), bilinear resize to the model's size."""
    if model.channels not in (1, 3):
        raise InferenceError(400, f"{batch.media_type}: images are read as 1 or 3 channels; this model takes "
                                  f"{model.channels}: send an array of shape {_shapes(model)[1][0]}")
    image = batch.image
    if batch.drafted:  # training decoded every pixel; a reduced-scale decode would not give its pixels
        image, _ = _open_image(batch.body or b"", batch.media_type, draft=False)
    mode = "L" if model.channels == 1 else "RGB"
    try:
        resized = image.convert(mode).resize((model.width, model.height), Image.Resampling.BILINEAR)
    except Exception as exc:  # noqa: BLE001 - Pillow's conversions of odd modes; all mean "cannot read this image"
        raise InferenceError(400, f"{batch.media_type}: cannot convert the image to {mode}: {exc}") from None
    array = np.asarray(resized, dtype=np.uint8).astype(np.float32)
    array = array if mode == "L" else array.transpose(2, 0, 1)
    return np.ascontiguousarray(array).reshape(1, *model.image_shape)


def _shapes(model: LoadedModel) -> tuple[list[str], list[str]]:
    """(shapes of one image, shapes of a batch) that this model accepts as arrays, channel-first first."""
    c, h, w = model.channels, model.height, model.width
    flat = c * h * w
    if c == 1:
        return [f"({h}, {w})", f"({flat},)", f"({h}, {w}, 1)"], \
               [f"(N, {h}, {w})", f"(N, {flat})", f"(N, 1, {h}, {w})", f"(N, {h}, {w}, 1)"]
    return [f"({c}, {h}, {w})", f"({h}, {w}, {c})", f"({flat},)"], \
           [f"(N, {c}, {h}, {w})", f"(N, {h}, {w}, {c})", f"(N, {flat})"]


def _fit_array(pixels: np.ndarray, model: LoadedModel) -> tuple[np.ndarray, bool] | None:
    """(images in the model's layout (N, C, H, W), single) for an accepted shape, else None."""
    c, h, w = model.channels, model.height, model.width
    shape, flat = pixels.shape, c * h * w
    if c == 1:
        if shape in ((h, w), (flat,), (h, w, 1)):
            return pixels.reshape(1, 1, h, w), True
        if len(shape) >= 2 and shape[1:] in ((h, w), (flat,), (1, h, w), (h, w, 1)):
            return pixels.reshape(-1, 1, h, w), False
        return None
    if shape in ((c, h, w), (flat,)):
        return pixels.reshape(1, c, h, w), True
    if shape == (h, w, c):
        return pixels.transpose(2, 0, 1)[None], True
    if len(shape) == 4 and shape[1:] == (c, h, w) or len(shape) == 2 and shape[1] == flat:
        return pixels.reshape(-1, c, h, w), False
    if len(shape) == 4 and shape[1:] == (h, w, c):
        return pixels.transpose(0, 3, 1, 2), False
    return None


def model_input(batch: Batch, model: LoadedModel) -> np.ndarray:
    """Fit a decoded request to ``model``: raw pixels 0..255, float32, (N, *image_shape), C-contiguous.

    Images: MNIST's recipe for a digit model, else the training job's reading (RGB or L, bilinear resize).
    Arrays must already have the model's size and channels, in one of the shapes :func:`_shapes` lists; CSV rows
    hold H*W*C values each (channel-first). Sets ``batch.single`` (one answer or a list) from the shape.
    """
    if batch.image is not None:
        batch.single = True
        return _digit_pixels(batch) if model.digit_input else _training_pixels(batch, model)
    if batch.pixels is None:
        raise InferenceError(400, "the request holds no pixels")
    what = batch.media_type or "request"
    pixels = batch.pixels
    shape_name = "x".join(map(str, model.image_shape))
    if batch.media_type == "text/csv":
        fitted = _fit_array(pixels, model) if pixels.ndim == 2 else None
        if fitted is None:
            values = model.channels * model.height * model.width
            raise InferenceError(400, f"text/csv: rows of {pixels.shape[-1]} values do not fit this model's "
                                      f"{shape_name} input; expected rows of {values} pixel values (one image per "
                                      "row, channel-first)")
        fitted = (fitted[0], False)
    else:
        fitted = _fit_array(pixels, model)
        if fitted is None:
            singles, batches = _shapes(model)
            raise InferenceError(400, f"{what}: shape {tuple(pixels.shape)} does not fit this model's {shape_name} "
                                      f"input; accepted shapes: one image {', '.join(singles)}; a batch "
                                      f"{', '.join(batches)}")
    images, batch.single = fitted
    if len(images) > MAX_BATCH:
        raise InferenceError(413, f"{what}: batch of {len(images)} images exceeds the limit of {MAX_BATCH}")
    return np.ascontiguousarray(images.reshape(len(images), *model.image_shape), dtype=np.float32)


# -- predict and output -----------------------------------------------------------------------------------------

def predict_fn(data: Batch, model: LoadedModel) -> Prediction:
    pixels = model_input(data, model)
    return Prediction(model.predict_proba(pixels), model.class_names, data.single)


def _answer(probs: list[float], names: list[str]) -> dict[str, Any]:
    order = sorted(range(len(probs)), key=probs.__getitem__, reverse=True)[: max(1, TOP_K)]
    best = order[0]
    return {
        "predicted_class": best,
        "class_name": names[best],
        "confidence": probs[best],
        "top_k": [{"class": i, "class_name": names[i], "probability": probs[i]} for i in order],
    }


def output_fn(prediction: Prediction, accept: str | None) -> tuple[str, str]:
    """JSON answer: predicted class, class name, confidence and top-k; {"predictions": [...]} for a batch."""
    wanted = [_media_type(part) for part in (accept or "").split(",") if part.strip()]
    if wanted and not any(w in (JSON_TYPE, "*/*", "application/*") for w in wanted):
        raise InferenceError(406, f"cannot answer in {accept!r}; this endpoint answers {JSON_TYPE}")
    answers = [_answer(row, prediction.class_names) for row in np.asarray(prediction.probabilities, float).tolist()]
    for answer in answers:
        if not math.isfinite(answer["confidence"]):
            raise InferenceError(500, "the model produced non-finite probabilities")
    body = answers[0] if prediction.single else {"predictions": answers}
    return json.dumps(body), JSON_TYPE


# -- TensorFlow Serving container: input_handler / output_handler ------------------------------------------------

# The Context the TensorFlow Serving container passes (sagemaker-tensorflow-serving-container, tfs_utils.py).
Context = namedtuple("Context", "model_name, model_version, method, rest_uri, grpc_port, channel, "
                                "custom_attributes, request_content_type, accept_header, content_length")


def make_context(content_type: str | None, accept: str | None, content_length: int | None = None,
                 rest_uri: str = "http://localhost:8501/v1/models/model:predict") -> Context:
    """A Context as the container builds it from a request. The container reads a request without Content-Type
    as JSON; here it stays None, so the answer is the PyTorch model's 415 (no Accept still means JSON)."""
    return Context("model", None, None, rest_uri, None, None, None, content_type, accept or JSON_TYPE,
                   content_length)


@functools.lru_cache(maxsize=8)
def _tf_model(model_dir: str) -> LoadedModel:
    """What model_config.json says about the SavedModel's input (no network: TF Serving holds that)."""
    return LoadedModel(read_config(model_dir), None, "tensorflow")


def tf_model_dir() -> str:
    """The model folder: the one holding this code/ folder (model.tar.gz's layout), else the container's."""
    here = Path(__file__).resolve().parent.parent
    return str(here) if (here / CONFIG_FILE).is_file() else TF_CONTAINER_MODEL_DIR


def _read_request(data: Any) -> bytes:
    if hasattr(data, "read"):
        data = data.read(MAX_BODY_BYTES + 1)
    if data is None:
        return b""
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def _pixels_json(pixels: np.ndarray) -> str:
    """Pixels as JSON numbers (4 decimals of a 0..255 grey level are far below what the model can tell apart)."""
    return json.dumps(np.round(pixels.astype(np.float64), 4).tolist())


def input_handler(data: Any, context: Any) -> str:
    """Request body -> TF Serving REST predict body: one image columnar ({"inputs"}), a batch row form ({"instances"}).

    The body is decoded by input_fn and fitted to the model by model_input, as for a PyTorch model: any size and
    colour of image (MNIST's recipe for digit models), arrays in any accepted shape, sent as (N, *image_shape).
    """
    body = _read_request(data)
    batch = input_fn(body, getattr(context, "request_content_type", None))
    pixels = model_input(batch, _tf_model(tf_model_dir()))
    if batch.single:
        return '{"inputs": ' + _pixels_json(pixels) + "}"
    return '{"instances": ' + _pixels_json(pixels) + "}"


def _response_json(response: Any) -> Any:
    status = int(getattr(response, "status_code", 200))
    content = getattr(response, "content", response)
    text = content.decode("utf-8", "replace") if isinstance(content, (bytes, bytearray)) else str(content)
    if status != 200:
        try:
            message = json.loads(text).get("error", text)
        except (ValueError, AttributeError):
            message = text
        raise InferenceError(status if 400 <= status < 600 else 502, f"TensorFlow Serving answered {status}: {message}")
    try:
        return json.loads(text)
    except ValueError:
        raise InferenceError(502, f"TensorFlow Serving answered something that is not JSON: {text[:80]!r}") from None


def output_handler(response: Any, context: Any) -> tuple[str, str]:
    """TF Serving response -> the same JSON answer as output_fn (one object for one image, else predictions)."""
    body = _response_json(response)
    if not isinstance(body, dict) or not ("outputs" in body or "predictions" in body):
        raise InferenceError(502, "TensorFlow Serving's answer has neither outputs nor predictions")
    single = "outputs" in body
    probabilities = body["outputs"] if single else body["predictions"]
    if isinstance(probabilities, dict):  # several named outputs
        probabilities = probabilities.get("probabilities")
    if probabilities and isinstance(probabilities[0], dict):
        probabilities = [row.get("probabilities") for row in probabilities]
    try:
        probs = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError):
        raise InferenceError(502, "TensorFlow Serving's probabilities are not a table of numbers") from None
    model = _tf_model(tf_model_dir())
    if probs.ndim != 2 or probs.shape[1] != model.num_classes:
        raise InferenceError(502, f"TensorFlow Serving answered probabilities of shape {probs.shape}, expected "
                                  f"(N, {model.num_classes})")
    return output_fn(Prediction(probs, model.class_names, single), getattr(context, "accept_header", None))
