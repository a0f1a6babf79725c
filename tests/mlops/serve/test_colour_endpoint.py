"""A colour model (3x32x32, image-folder data) over real HTTP through our endpoint: PNGs of any size and mode get
the right class_name, arrays in each accepted layout the same answers as in-process, concurrent requests share a
forward pass, and a wrong shape or any bad request is a 4xx JSON error, never a 500."""

from __future__ import annotations

import http.client
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from inference import inference as h
from tests.helpers.bad_requests import BAD_INPUTS
from tests.helpers.models import (
    COLOUR_CLASSES,
    colour_pictures,
    load_mnist,
    picture_png,
    trained_colour_cnn,
    write_cnn_model_dir,
)
from tests.helpers.serving import serving


def post(port: int, body: bytes, content_type: str | None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type} if content_type else {})
        response = conn.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type", "").startswith("application/json"), raw[:200]
        return response.status, json.loads(raw)
    finally:
        conn.close()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    state, config = trained_colour_cnn()
    return write_cnn_model_dir(tmp_path_factory.mktemp("colour"), state, config)


@pytest.fixture(scope="module")
def model(model_dir):
    return h.model_fn(str(model_dir))


@pytest.fixture(scope="module")
def port(model_dir):
    with serving(model_dir, "--workers", "1", "--max-batch", "16", "--max-delay-ms", "2") as (port, _):
        yield port


def test_real_pngs_of_any_size_and_mode_get_the_right_class_name(port, model):
    pictures, labels = colour_pictures(24, width=120, height=80, seed=11)
    right = 0
    for i, (picture, label) in enumerate(zip(pictures, labels, strict=True)):
        body = picture_png(picture, ("RGB", "RGBA", "P")[i % 3])
        status, answer = post(port, body, "image/png")
        assert status == 200, answer
        assert answer["class_name"] == COLOUR_CLASSES[answer["predicted_class"]]
        in_process = json.loads(h.output_fn(h.predict_fn(h.input_fn(body, "image/png"), model), None)[0])
        assert answer["predicted_class"] == in_process["predicted_class"]
        assert abs(answer["confidence"] - in_process["confidence"]) < 1e-5
        right += answer["class_name"] == COLOUR_CLASSES[label]
    assert right >= 21, f"{right}/24 right"
    status, answer = post(port, picture_png(pictures[0], "L"), "image/png")  # grey: read as RGB, like training
    assert status == 200 and answer["class_name"] in COLOUR_CLASSES


def test_arrays_in_each_layout_answer_like_the_handlers(port, model):
    pictures, _ = colour_pictures(5, seed=12)
    chw = pictures.transpose(0, 3, 1, 2)
    expected = model.predict_proba(chw.astype(np.float32))
    for body, content_type in ((npy(pictures), "application/x-npy"), (npy(chw), "application/x-npy"),
                               (json.dumps(pictures.tolist()).encode(), "application/json"),
                               (json.dumps({"instances": chw.reshape(5, -1).tolist()}).encode(), "application/json")):
        status, answer = post(port, body, content_type)
        assert status == 200, answer
        assert [p["predicted_class"] for p in answer["predictions"]] == expected.argmax(1).tolist()
        assert np.allclose([p["confidence"] for p in answer["predictions"]], expected.max(1), atol=1e-5)
    status, answer = post(port, npy(pictures[0]), "application/x-npy")  # (H, W, C): one image, one object
    assert status == 200 and answer["predicted_class"] == int(expected[0].argmax())


def test_concurrent_images_and_arrays_batched_together_stay_right(port, model):
    """The worker batches overlapping requests (--max-delay-ms 2): PNGs and arrays fitted to one layout."""
    pictures, _ = colour_pictures(16, seed=13)
    bodies = [(picture_png(p), "image/png") if i % 2 else (npy(p), "application/x-npy") for i, p in enumerate(pictures)]
    expected = [json.loads(h.output_fn(h.predict_fn(h.input_fn(b, t), model), None)[0])["predicted_class"]
                for b, t in bodies]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda bt: post(port, *bt), bodies * 3))
    assert all(status == 200 for status, _ in results), [a for s, a in results if s != 200][:3]
    assert [a["predicted_class"] for _, a in results] == expected * 3


@pytest.mark.parametrize("shape", [(28, 28), (4, 28, 28), (32, 32), (3, 32, 32, 1), (32, 32, 4), (2, 3, 31, 32)])
def test_wrong_shapes_are_400_listing_the_accepted_ones(port, shape):
    array = np.zeros(shape, np.uint8)
    for body, content_type in ((npy(array), "application/x-npy"), (json.dumps(array.tolist()).encode(),
                                                                    "application/json")):
        status, answer = post(port, body, content_type)
        assert status == 400 and answer["status"] == 400, answer
        assert f"shape {shape}" in answer["error"]
        for accepted in ("(3, 32, 32)", "(32, 32, 3)", "(N, 3, 32, 32)", "(N, 32, 32, 3)", "(N, 3072)"):
            assert accepted in answer["error"], answer["error"]
    status, answer = post(port, ",".join(["0"] * 784).encode(), "text/csv")
    assert status == 400 and "3072" in answer["error"]


@pytest.mark.parametrize(("name", "body", "content_type", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_requests_are_client_errors_never_500(port, name, body, content_type, status):
    """The digit corpus against a colour model: the same refusals (a digit-shaped array is now a wrong shape)."""
    got, answer = post(port, body, content_type)
    assert 400 <= got < 500 and answer["status"] == got and answer["error"], (name, got, answer)
    if status == 415 or status == 413 and "batch over limit" not in name:  # 1,025 rows of 784: not 3x32x32 rows
        assert got == status, (name, got, answer)


def test_a_digit_still_gets_an_answer_as_an_image(port):
    """Any image is read for the model it is sent to: an MNIST digit PNG is a valid (if odd) colour picture."""
    digit = load_mnist("test", 1)[0][0]
    status, answer = post(port, picture_png(np.repeat(digit[..., None], 3, axis=2)), "image/png")
    assert status == 200 and answer["class_name"] in COLOUR_CLASSES
