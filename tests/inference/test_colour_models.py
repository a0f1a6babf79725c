"""Models of any size and colour served from any request: images are read the way the training job read its image
folder (training/formats.py), arrays are accepted in every reasonable layout of the model's size and channels, any
other shape is a 400 that lists the accepted ones, and digit models keep MNIST's recipe."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference import inference as h
from tests.helpers.models import cnn_config, digit_png, load_mnist, write_cnn_model_dir
from training.formats import _load_image as training_read  # the reading the served pixels must reproduce

RNG = np.random.default_rng(3)
COLOUR_NAMES = ["airplane", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck", "automobile"]


def colour_config(shape=(3, 32, 32), data_format="image-folder") -> dict:
    config = {**cnn_config(), "image_shape": list(shape), "class_names": COLOUR_NAMES, "data_format": data_format,
              "normalization": {"scale": 1 / 255, "mean": 0.47, "std": 0.25}}
    if len(shape) == 3:
        config["in_channels"] = shape[0]
    return config


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    """A 3x32x32 CNN with random weights generated here (torch.manual_seed in write_cnn_model_dir)."""
    return h.model_fn(str(write_cnn_model_dir(tmp_path_factory.mktemp("colour"), config=colour_config())))


@pytest.fixture(scope="module")
def gray32(tmp_path_factory):
    return h.model_fn(str(write_cnn_model_dir(tmp_path_factory.mktemp("gray32"), config=colour_config((32, 32)))))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return h.model_fn(str(write_cnn_model_dir(tmp_path_factory.mktemp("digits"))))


def encode(picture: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def photo(width: int, height: int) -> np.ndarray:
    """A smooth colour picture (gradients and a disc) with some noise: what resampling differences would show on."""
    ys, xs = np.mgrid[0:height, 0:width]
    r = 255 * xs / max(1, width - 1)
    g = 255 * ys / max(1, height - 1)
    b = np.where((xs - width / 2) ** 2 + (ys - height / 2) ** 2 < (min(width, height) / 3) ** 2, 220, 30)
    noise = RNG.normal(0, 12, size=(height, width, 3))
    return np.clip(np.stack([r, g, b], axis=-1) + noise, 0, 255).astype(np.uint8)


def answer(model, body, content_type):
    text, _ = h.output_fn(h.predict_fn(h.input_fn(body, content_type), model), "application/json")
    return json.loads(text)


def refusal(model, body, content_type) -> h.InferenceError:
    with pytest.raises(h.InferenceError) as info:
        h.predict_fn(h.input_fn(body, content_type), model)
    return info.value


# -- images are read as the training job read them ----------------------------------------------------------------

IMAGE_FORMS = {
    "png rgb 32x32": lambda: encode(Image.fromarray(photo(32, 32)), "PNG"),
    "png rgb 200x120": lambda: encode(Image.fromarray(photo(200, 120)), "PNG"),
    "png rgb 17x45": lambda: encode(Image.fromarray(photo(17, 45)), "PNG"),
    "png gray 64x64": lambda: encode(Image.fromarray(photo(64, 64)).convert("L"), "PNG"),
    "png rgba": lambda: encode(Image.fromarray(photo(80, 80)).convert("RGBA"), "PNG"),
    "png palette with transparency": lambda: encode(Image.fromarray(photo(50, 50)).convert("P"), "PNG",
                                                    transparency=0),
    "png 16-bit gray": lambda: encode(Image.fromarray(photo(40, 40)[..., 0].astype(np.uint16) * 257), "PNG"),
    "jpeg rgb 300x200": lambda: encode(Image.fromarray(photo(300, 200)), "JPEG", quality=90),
    "jpeg large 1400x900 (decoded at reduced scale first)": lambda: encode(Image.fromarray(photo(1400, 900)), "JPEG"),
    "jpeg gray": lambda: encode(Image.fromarray(photo(100, 100)).convert("L"), "JPEG"),
    "jpeg cmyk": lambda: encode(Image.fromarray(photo(60, 60)).convert("CMYK"), "JPEG"),
    "webp": lambda: encode(Image.fromarray(photo(70, 70)), "WEBP", lossless=True),
    "bmp": lambda: encode(Image.fromarray(photo(33, 33)), "BMP"),
    "tiff": lambda: encode(Image.fromarray(photo(48, 40)), "TIFF"),
}
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp",
                 "TIFF": "image/tiff"}


def content_type_of(body: bytes) -> str:
    return CONTENT_TYPES[Image.open(io.BytesIO(body)).format]


@pytest.mark.parametrize("form", list(IMAGE_FORMS))
@pytest.mark.parametrize("model_name", ["colour", "gray32"])
def test_images_are_read_exactly_as_training_read_them(request, tmp_path: Path, form, model_name):
    model = request.getfixturevalue(model_name)
    body = IMAGE_FORMS[form]()
    path = tmp_path / "image"
    path.write_bytes(body)
    expected = training_read(path, 32, "RGB" if model.channels == 3 else "L").astype(np.float32)
    pixels = h.model_input(h.input_fn(body, content_type_of(body)), model)
    assert pixels.shape == (1, *model.image_shape) and pixels.dtype == np.float32
    assert np.array_equal(pixels[0], expected)
    probs = h.predict_fn(h.input_fn(body, content_type_of(body)), model).probabilities
    assert np.allclose(probs, model.predict_proba(expected[None]), atol=1e-6)


def test_an_image_answers_one_object_with_class_names(colour):
    result = answer(colour, IMAGE_FORMS["png rgb 200x120"](), "image/png")
    assert set(result) == {"predicted_class", "class_name", "confidence", "top_k"}
    assert result["class_name"] == COLOUR_NAMES[result["predicted_class"]]


def test_other_sizes_are_read_at_their_size(tmp_path):
    model = h.model_fn(str(write_cnn_model_dir(tmp_path, config=colour_config((3, 48, 48)))))
    body = IMAGE_FORMS["png rgb 200x120"]()
    (tmp_path / "image.png").write_bytes(body)
    pixels = h.model_input(h.input_fn(body, "image/png"), model)
    assert np.array_equal(pixels[0], training_read(tmp_path / "image.png", 48, "RGB"))


def test_a_28x28_gray_image_folder_model_is_not_read_as_a_digit(tmp_path):
    """Only IDX models (MNIST-like) get MNIST's inversion and centring; an image folder at 28x28 is read plainly."""
    model = h.model_fn(str(write_cnn_model_dir(tmp_path, config=colour_config((28, 28)))))
    assert not model.digit_input
    light = np.full((60, 60), 230, np.uint8)
    light[10:20, 10:20] = 20
    body = encode(Image.fromarray(light), "PNG")
    (tmp_path / "light.png").write_bytes(body)
    pixels = h.model_input(h.input_fn(body, "image/png"), model)
    assert np.array_equal(pixels[0], training_read(tmp_path / "light.png", 28, "L"))
    assert pixels.mean() > 150  # not inverted to white-on-black


# -- arrays in every accepted layout ------------------------------------------------------------------------------

def test_colour_arrays_in_each_accepted_shape_give_the_same_answers(colour):
    chw = RNG.integers(0, 256, size=(4, 3, 32, 32)).astype(np.uint8)
    hwc = chw.transpose(0, 2, 3, 1)
    reference = colour.predict_proba(chw.astype(np.float32))
    singles = {"(3, 32, 32)": chw[0], "(32, 32, 3)": hwc[0], "(3072,)": chw[0].reshape(-1)}
    batches = {"(N, 3, 32, 32)": chw, "(N, 32, 32, 3)": hwc, "(N, 3072)": chw.reshape(4, -1)}
    for name, array in singles.items():
        for body, content_type in ((npy(array), "application/x-npy"), (json.dumps(array.tolist()), "application/json")):
            prediction = h.predict_fn(h.input_fn(body, content_type), colour)
            assert prediction.single, name
            assert np.allclose(prediction.probabilities, reference[:1], atol=1e-6), (name, content_type)
    for name, array in batches.items():
        for body, content_type in ((npy(array), "application/x-npy"), (json.dumps(array.tolist()), "application/json"),
                                   (json.dumps({"instances": array.tolist()}), "application/json")):
            prediction = h.predict_fn(h.input_fn(body, content_type), colour)
            assert not prediction.single, name
            assert np.allclose(prediction.probabilities, reference, atol=1e-6), (name, content_type)
    csv = "\n".join(",".join(map(str, row)) for row in chw.reshape(4, -1)).encode()
    assert np.allclose(h.predict_fn(h.input_fn(csv, "text/csv"), colour).probabilities, reference, atol=1e-6)
    assert len(answer(colour, npy(chw[:1]), "application/x-npy")["predictions"]) == 1  # (1, C, H, W) is a batch


def test_grayscale_arrays_in_each_accepted_shape(gray32):
    images = RNG.integers(0, 256, size=(3, 32, 32)).astype(np.float32)
    reference = gray32.predict_proba(images)
    for array, single in ((images[0], True), (images[0].reshape(-1), True), (images[0][..., None], True),
                          (images, False), (images.reshape(3, -1), False), (images[:, None], False),
                          (images[..., None], False)):
        prediction = h.predict_fn(h.input_fn(npy(array), "application/x-npy"), gray32)
        assert prediction.single == single, array.shape
        assert np.allclose(prediction.probabilities, reference[:1] if single else reference, atol=1e-6), array.shape


@pytest.mark.parametrize("shape", [(32, 32), (5, 32, 32), (3, 28, 28), (28, 28), (32, 32, 4), (3, 32), (3071,),
                                   (2, 3, 32, 31), (2, 4, 32, 32), (1, 1, 3, 32, 32), ()])
def test_wrong_shapes_are_400_listing_the_accepted_ones(colour, shape):
    array = np.zeros(shape, np.uint8)
    for body, content_type in ((npy(array), "application/x-npy"), (json.dumps(array.tolist()), "application/json")):
        error = refusal(colour, body, content_type)
        assert error.status_code == 400, (shape, error.message)
        assert f"shape {shape}" in error.message and "3x32x32" in error.message
        for accepted in ("(3, 32, 32)", "(32, 32, 3)", "(3072,)", "(N, 3, 32, 32)", "(N, 32, 32, 3)", "(N, 3072)"):
            assert accepted in error.message, error.message


def test_csv_of_the_wrong_width_names_the_width(colour):
    error = refusal(colour, ",".join(["0"] * 784).encode(), "text/csv")
    assert error.status_code == 400 and "rows of 3072 pixel values" in error.message


def test_a_json_batch_of_real_colour_pixels_fits_the_limits(colour):
    """MAX_JSON_ELEMENTS lets through a batch as large as a 6 MB body of real pixel values can carry."""
    images = RNG.integers(0, 256, size=(500, 3, 32, 32))
    body = json.dumps(images.tolist(), separators=(",", ":")).encode()
    assert len(body) < h.MAX_BODY_BYTES
    assert h.predict_fn(h.input_fn(body, "application/json"), colour).probabilities.shape == (500, 10)
    assert h.MAX_JSON_ELEMENTS >= (h.MAX_BODY_BYTES // 3)


def test_batch_over_the_limit_is_413_for_colour_models(colour):
    body = npy(np.zeros((h.MAX_BATCH + 1, 3072), np.uint8))
    assert refusal(colour, body, "application/x-npy").status_code == 413


# -- digit models keep MNIST's recipe ------------------------------------------------------------------------------

def test_digit_models_keep_mnists_recipe(digits, tmp_path):
    image = load_mnist("test", 1)[0][0]
    assert digits.digit_input and digits.data_format == "idx"  # no data_format recorded: an older MNIST model
    recorded = h.model_fn(str(write_cnn_model_dir(tmp_path, config={**cnn_config(), "data_format": "idx"})))
    assert recorded.digit_input
    for body in (digit_png(image), digit_png(image, size=112, invert=True, rgb=True)):
        pixels = h.model_input(h.input_fn(body, "image/png"), digits)
        assert pixels.shape == (1, 28, 28)
        assert np.array_equal(pixels, h.model_input(h.input_fn(body, "image/png"), recorded))
    assert np.array_equal(h.model_input(h.input_fn(digit_png(image), "image/png"), digits)[0], image)
    inverted = h.model_input(h.input_fn(digit_png(image, size=112, invert=True), "image/png"), digits)[0]
    assert np.corrcoef(inverted.reshape(-1), image.reshape(-1).astype(float))[0, 1] > 0.8  # inverted and centred
    for array in (image, image.reshape(-1), image[..., None], image[None], image[None, None], image[None, ..., None]):
        assert np.array_equal(h.model_input(h.input_fn(npy(array), "application/x-npy"), digits).reshape(28, 28),
                              image)
    error = refusal(digits, npy(np.zeros((3, 32, 32), np.uint8)), "application/x-npy")
    assert error.status_code == 400 and "(28, 28)" in error.message and "(N, 784)" in error.message
