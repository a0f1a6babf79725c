"""The model.tar.gz this project registers, served by SageMaker's own PyTorch serving stack.

TorchServe 0.12 + sagemaker-pytorch-inference 2.0.25 run here exactly as ../shared/peer-endpoint starts them
(the container's ``serve`` entry point, SAGEMAKER_* environment, /opt/ml/model from the extracted archive). The
same archive is served by our endpoint, and both must give the same answers to real MNIST digits, as PNG and as
JSON, and refuse the same unsupported content type with a 4xx.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from tests.helpers.models import digit_png, load_mnist, package_model, trained_cnn, write_cnn_model_dir
from tests.helpers.serving import peer_serving, serving

pytestmark = [pytest.mark.fidelity, pytest.mark.slow]

DIGITS = 40


def post(port: int, body: bytes, content_type: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type,
                                                                 "Accept": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def model_tar(tmp_path_factory) -> Path:
    state, config = trained_cnn()
    folder = tmp_path_factory.mktemp("model")
    write_cnn_model_dir(folder / "dir", state, config)
    return package_model(folder / "dir", folder / "model.tar.gz")


@pytest.fixture(scope="module")
def peer(model_tar, tmp_path_factory):
    """SageMaker's PyTorch serving stack on loopback, started by the peer recipe with this project's venv."""
    try:
        with peer_serving(model_tar, tmp_path_factory.mktemp("peer")) as port:
            yield port
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def ours(model_tar, tmp_path_factory):
    import tarfile

    folder = tmp_path_factory.mktemp("ours")
    with tarfile.open(model_tar) as tar:
        tar.extractall(folder, filter="data")
    with serving(folder, "--workers", "1") as (port, _):
        yield port


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist("test", DIGITS)
    return images, labels


def same_answer(a, b, where: str = "body") -> None:
    """Equal JSON, floats within 1e-4 (both stacks run the same handlers on the same torch)."""
    if isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) < 1e-4, (where, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, a, b)
        for key in a:
            same_answer(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_answer(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_the_registered_archive_answers_real_digits_the_same_on_both_stacks(peer, ours, digits):
    images, labels = digits
    hits = 0
    for image, label in zip(images, labels, strict=True):
        png = digit_png(image)
        peer_status, peer_body = post(peer, png, "image/png")
        our_status, our_body = post(ours, png, "image/png")
        assert peer_status == our_status == 200, (peer_body[:300], our_body[:300])
        theirs, mine = json.loads(peer_body), json.loads(our_body)
        same_answer(theirs, mine)
        hits += theirs["predicted_class"] == int(label)
    assert hits >= 0.85 * len(labels), f"only {hits}/{len(labels)} right: the archive did not load the trained weights"


def test_json_and_upscaled_rgb_answer_the_same(peer, ours, digits):
    images, _ = digits
    body = json.dumps(images[:4].tolist()).encode()
    peer_status, peer_body = post(peer, body, "application/json")
    our_status, our_body = post(ours, body, "application/json")
    assert peer_status == our_status == 200, (peer_body[:300], our_body[:300])
    same_answer(json.loads(peer_body), json.loads(our_body))
    rgb = digit_png(images[0], size=112, rgb=True)
    same_answer(json.loads(post(peer, rgb, "image/png")[1]), json.loads(post(ours, rgb, "image/png")[1]))


def test_an_unsupported_content_type_is_a_client_error_on_both(peer, ours):
    peer_status, _ = post(peer, b"hello", "text/csv")
    our_status, _ = post(ours, b"hello", "text/csv")
    assert 400 <= peer_status < 500 and 400 <= our_status < 500, (peer_status, our_status)
