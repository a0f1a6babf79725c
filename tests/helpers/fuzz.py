"""Hypothesis strategies of request bodies for every content type input_fn takes: well-formed, mutated, random.

Each body goes through input_fn and then model_input for a 28x28 digit model and a 3x32x32 colour model.
Shared by the bounded fuzz tests (tests/inference/test_fuzz.py) and benchmarks/bench_fuzz.py, so the
benchmark's 100,000+ inputs come from exactly the generators the test suite runs.
"""

from __future__ import annotations

import io
import json

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inference import inference as h
from tests.helpers.images import digit_forms
from tests.helpers.models import cnn_config, load_mnist

# A digit model (MNIST's recipe for images) and a colour model (images read like training): model_input's two paths.
DIGIT_MODEL = h.LoadedModel(cnn_config(), None, "pytorch")
COLOUR_MODEL = h.LoadedModel({**cnn_config(), "image_shape": [3, 32, 32], "in_channels": 3,
                              "data_format": "image-folder"}, None, "pytorch")


def _refused(exc: h.InferenceError) -> str:
    assert 400 <= exc.status_code < 500 and exc.message, (exc.status_code, exc.message)
    return str(exc.status_code)


def _fits(batch: h.Batch, model: h.LoadedModel) -> str:
    """model_input for ``model``: pixels in the model's layout and range, or a 4xx InferenceError."""
    try:
        pixels = h.model_input(batch, model)
    except h.InferenceError as exc:
        return _refused(exc)
    assert pixels.shape[1:] == model.image_shape and 1 <= len(pixels) <= h.MAX_BATCH, pixels.shape
    assert pixels.dtype == np.float32 and np.isfinite(pixels).all(), pixels.dtype
    assert float(pixels.min()) >= 0 and float(pixels.max()) <= 255, (float(pixels.min()), float(pixels.max()))
    return "ok"


def check(body: bytes, content_type: str | None) -> str:
    """Run input_fn, then model_input for a digit and a colour model; the only exception allowed is
    InferenceError with a 4xx status. Returns the digit model's outcome."""
    try:
        batch = h.input_fn(body, content_type)
    except h.InferenceError as exc:
        return _refused(exc)
    _fits(batch, COLOUR_MODEL)
    return _fits(batch, DIGIT_MODEL)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed body with a few bytes overwritten, a slice dropped or repeated, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    kind = draw(st.sampled_from(["none", "truncate", "drop", "repeat"]))
    if data and kind != "none":
        a = draw(st.integers(0, len(data)))
        b = draw(st.integers(a, min(len(data), a + 64)))
        if kind == "truncate":
            data = data[:a]
        elif kind == "drop":
            del data[a:b]
        else:
            data[a:a] = bytes(data[a:b]) * draw(st.integers(1, 4))
    return bytes(data)


_digits = load_mnist("test", 3)[0]
_forms = [digit_forms(d) for d in _digits]
IMAGE_SEEDS: dict[str, list[bytes]] = {}
for forms in _forms:
    for body, content_type in forms.values():
        IMAGE_SEEDS.setdefault(content_type, []).append(body)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=30) | st.dictionaries(
        st.sampled_from(["instances", "inputs", "image", "images", "x"]), children, max_size=3),
    max_leaves=200)
pixel_grids = st.one_of(
    hnp.arrays(np.int64, st.sampled_from([(28, 28), (784,), (2, 28, 28), (3, 784), (27, 28)]),
               elements=st.integers(-5, 300)),
    hnp.arrays(np.float64, st.sampled_from([(28, 28), (1, 784)]), elements=st.floats(-1, 256) | st.just(float("nan"))))
json_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    pixel_grids.map(lambda a: json.dumps(a.tolist()).encode()),
    pixel_grids.map(lambda a: json.dumps({"instances": a.tolist()}).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    mutated([json.dumps(_digits[0].tolist()).encode(), json.dumps({"instances": _digits.tolist()}).encode()]),
    st.binary(max_size=200))

npy_arrays = hnp.arrays(
    st.one_of(hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes(),
              hnp.complex_number_dtypes(), hnp.byte_string_dtypes(max_len=3), hnp.unicode_string_dtypes(max_len=3)),
    st.one_of(st.sampled_from([(28, 28), (784,), (2, 28, 28), (1, 1, 28, 28), (2, 1, 28, 28), (0, 784),
                               (3, 32, 32), (32, 32, 3), (2, 32, 32, 3), (1, 3072)]),
              hnp.array_shapes(min_dims=0, max_dims=4, max_side=6)))
npy_bodies = st.one_of(
    npy_arrays.map(_npy),
    mutated([_npy(_digits[0]), _npy(_digits.astype(np.float32)), _npy(_digits.reshape(3, 784))]),
    st.binary(max_size=64).map(lambda tail: b"\x93NUMPY" + tail),
    st.binary(max_size=200))

csv_cells = st.one_of(st.integers(-10, 300).map(str), st.floats(allow_nan=True).map(repr), st.text(max_size=4))
csv_bodies = st.one_of(
    st.lists(st.lists(csv_cells, min_size=1, max_size=6), max_size=4).map(
        lambda rows: "\n".join(",".join(r) for r in rows).encode("utf-8", "surrogatepass")),
    hnp.arrays(np.int64, st.sampled_from([(1, 784), (2, 784), (1, 783)]), elements=st.integers(-2, 260)).map(
        lambda a: "\n".join(",".join(map(str, row)) for row in a).encode()),
    mutated([",".join(map(str, _digits[0].reshape(-1))).encode()]),
    st.binary(max_size=200))

content_types = st.one_of(
    st.sampled_from(list(h.IMAGE_TYPES) + ["application/json", "application/x-npy", "text/csv"]).flatmap(
        lambda t: st.sampled_from([t, t.upper(), t + "; charset=utf-8", " " + t])),
    st.none(), st.text(max_size=30))


def image_bodies(content_type: str) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(IMAGE_SEEDS[content_type]), st.binary(max_size=300),
                     st.sampled_from(IMAGE_SEEDS[content_type]))


# content type -> strategy of bodies: what the tests and the benchmark fuzz
BODIES: dict[str, st.SearchStrategy[bytes]] = {
    "application/json": json_bodies,
    "application/x-npy": npy_bodies,
    "text/csv": csv_bodies,
    **{t: image_bodies(t) for t in ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/tiff")},
}
