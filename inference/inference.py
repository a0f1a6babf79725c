"""SageMaker inference handlers for the MNIST classifiers (CNN and XGBoost baseline).

Implements the SageMaker inference toolkit contract, so the same file serves inside SageMaker's PyTorch
inference container (as ``code/inference.py`` in model.tar.gz) and in our local endpoint:

    model_fn(model_dir) -> model
    input_fn(body, content_type) -> Batch of raw pixels (0..255, float32, shape (N, 28, 28))
    predict_fn(batch, model) -> Prediction (class probabilities)
    output_fn(prediction, accept) -> (JSON text, "application/json")

Request bodies (pixels are intensities 0..255, MNIST polarity: white digit on black):
- application/json: one image as 28x28 nested lists or 784 numbers -> one answer; a batch as a list of
  those (or {"instances": [...]}) -> {"predictions": [...]}.
- application/x-npy: a numpy .npy array (no pickles), shape (28, 28) or (784,) for one image, (N, 28, 28),
  (N, 784) or (N, 1, 28, 28) for a batch.
- text/csv: one image per row of 784 values (the XGBoost container's format); always a batch answer.
- image/png, image/jpeg: any size and colour. Converted the way MNIST was made: grayscale, polarity fixed
  (a light background is inverted), and, unless already 28x28, cropped to the ink, fitted into 20x20 and
  centred by centre of mass in 28x28.
Normalisation (scale, mean, std) comes from model_config.json and is applied in predict_fn, because the
toolkit's input_fn does not receive the model.

Errors are :class:`InferenceError` carrying an HTTP status (400 bad input, 406 bad Accept, 413 too large,
415 unsupported type); inside the SageMaker container they subclass the toolkit's
GenericInferenceToolkitError so the container answers with that status too.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import warnings
from dataclasses import dataclass
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
JSON_TYPE = "application/json"
MAX_JSON_DEPTH = 8  # {"instances": [batch [rows [pixels]]]} is 4 deep; deeper is never an image
MAX_JSON_ELEMENTS = MAX_BATCH * (784 + 28 + 1) + 16  # numbers and lists in the largest valid batch
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
    """Raw pixels (0..255) of N images; ``single`` says whether the caller sent one image, not a list."""

    pixels: np.ndarray
    single: bool


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
        self.image_shape = tuple(int(d) for d in config.get("image_shape", (28, 28)))
        norm = config.get("normalization") or {}
        self.scale = float(norm.get("scale", 1 / 255))
        self.mean = float(norm.get("mean", 0.0))
        self.std = float(norm.get("std", 1.0))

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        return ((pixels * self.scale - self.mean) / self.std).astype(np.float32, copy=False)

    def predict_proba(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N, num_classes) for raw pixels: (N, H, W) grayscale or (N, C, H, W)."""
        x = self.normalise(pixels)
        if self.framework == "xgboost":
            out = np.asarray(self.predictor.inplace_predict(x.reshape(len(x), -1)), dtype=np.float64)
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
    if config["framework"] not in ("pytorch", "xgboost"):
        raise ValueError(f"{path}: framework {config['framework']!r} is not 'pytorch' or 'xgboost'")
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


def _as_batch(array: np.ndarray, what: str) -> Batch:
    """Accept (28,28) / (784,) as one image and (N,28,28) / (N,784) / (N,1,28,28) as a batch."""
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InferenceError(400, f"{what}: expected numbers, got dtype {array.dtype}")
    if np.iscomplexobj(array):
        raise InferenceError(400, f"{what}: complex numbers are not pixels")
    shape = array.shape
    if shape == (28, 28) or shape == (784,):
        single, images = True, array.reshape(1, 28, 28)
    elif shape[1:] in ((28, 28), (784,), (1, 28, 28)):
        single, images = False, array.reshape(-1, 28, 28)
    else:
        raise InferenceError(400, f"{what}: shape {shape} is not an image of 28x28 (or 784) pixels or a batch of them")
    if len(images) == 0:
        raise InferenceError(400, f"{what}: empty batch")
    if len(images) > MAX_BATCH:
        raise InferenceError(413, f"{what}: batch of {len(images)} images exceeds the limit of {MAX_BATCH}")
    images = images.astype(np.float32)
    if not np.isfinite(images).all():
        raise InferenceError(400, f"{what}: contains NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0 or high > 255:
        raise InferenceError(400, f"{what}: pixel values must lie in 0..255, got {low:g}..{high:g}")
    return Batch(images, single)


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
                                  "(an image is 28x28 nested lists, a batch one more level)")
    if separators + 1 > MAX_JSON_ELEMENTS:
        raise InferenceError(413, f"application/json: {separators + 1} elements exceeds the limit of "
                                  f"{MAX_JSON_ELEMENTS} ({MAX_BATCH} images of 28x28 numbers)")
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
                                  "(28x28, 784, or a batch of those)") from None
    return _as_batch(array, "application/json")


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
    return _as_batch(array, "application/x-npy")


def _from_csv(body: bytes) -> Batch:
    try:
        text = body.decode("utf-8")
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
        widths = {len(row) for row in rows}
        if len(widths) > 1:
            raise InferenceError(400, f"text/csv: rows have different lengths {sorted(widths)}; expected 784 each")
        array = np.array(rows, dtype=np.float32)
    except UnicodeDecodeError:
        raise InferenceError(400, "text/csv body is not UTF-8 text") from None
    except csv.Error as exc:
        raise InferenceError(400, f"text/csv: malformed CSV (expected rows of 784 numbers): {exc}") from None
    except ValueError as exc:
        raise InferenceError(400, f"text/csv: non-numeric value: {exc}") from None
    if array.ndim != 2 or array.shape[1] != 784:
        raise InferenceError(400, f"text/csv: expected rows of 784 pixel values, got shape {array.shape}")
    batch = _as_batch(array, "text/csv")
    batch.single = False
    return batch


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


def _open_image(body: bytes, media_type: str) -> Image.Image:
    """Parse the header, refuse too many pixels, then decode (the first frame of an animation)."""
    expected = IMAGE_TYPES[media_type]
    try:
        image = Image.open(io.BytesIO(body), formats=[expected])  # parses the header only
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise InferenceError(413, f"{media_type}: {width}x{height} pixels exceeds the limit of "
                                      f"{MAX_IMAGE_PIXELS} pixels (decompression bomb guard)")
        if expected == "JPEG" and min(width, height) > 512 and image.mode in ("L", "RGB"):
            image.draft(image.mode, (256, 256))  # JPEG decodes at 1/2..1/8 scale: big photos stay cheap
        image.load()
        if expected == "JPEG":
            image = ImageOps.exif_transpose(image)  # phone photos carry their rotation in EXIF
    except InferenceError:
        raise
    except Image.DecompressionBombError as exc:
        raise InferenceError(413, f"{media_type}: refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt data; all mean "bad image"
        raise InferenceError(400, f"{media_type}: cannot decode the image as {expected}: {exc}") from None
    return image


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
    gray = _ink(_open_image(body, media_type)).astype(np.float32, copy=False)
    if gray.shape != (28, 28):
        gray = _mnist_layout(gray)
    return Batch(np.ascontiguousarray(gray).reshape(1, 28, 28), True)


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


# -- predict and output -----------------------------------------------------------------------------------------

def predict_fn(data: Batch, model: LoadedModel) -> Prediction:
    if data.pixels.shape[1:] != model.image_shape:
        raise InferenceError(400, f"images of shape {data.pixels.shape[1:]} do not match the model's {model.image_shape}")
    return Prediction(model.predict_proba(data.pixels), model.class_names, data.single)


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
