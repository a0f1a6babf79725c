"""A colour model.tar.gz (3x32x32, image-folder data) served by SageMaker's own PyTorch serving stack and by ours.

TorchServe + sagemaker-pytorch-inference start exactly as ../shared/peer-endpoint starts them
(tests/fidelity/test_serving_stack.py has the recipe); inside it only the archive's ``code/`` is importable, so this
proves code/inference.py, code/models.py and code/features.py serve a colour model on their own. Both servers must
give the same answers to PNGs of several sizes and modes, to arrays in each accepted layout, and refuse a wrong
shape with a 4xx.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.fidelity.test_serving_stack import post, same_answer
from tests.helpers.models import (
    COLOUR_CLASSES,
    colour_pictures,
    package_model,
    picture_png,
    trained_colour_cnn,
    write_cnn_model_dir,
)
from tests.helpers.serving import peer_serving, serving

pytestmark = [pytest.mark.fidelity, pytest.mark.slow]


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_tar(tmp_path_factory) -> Path:
    state, config = trained_colour_cnn()
    folder = tmp_path_factory.mktemp("colour-model")
    write_cnn_model_dir(folder / "dir", state, config)
    return package_model(folder / "dir", folder / "model.tar.gz")


@pytest.fixture(scope="module")
def peer(model_tar, tmp_path_factory):
    try:
        with peer_serving(model_tar, tmp_path_factory.mktemp("peer-colour")) as port:
            yield port
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def ours(model_tar, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ours-colour")
    with tarfile.open(model_tar) as tar:
        tar.extractall(folder, filter="data")
    with serving(folder, "--workers", "1") as (port, _):
        yield port


def both(peer: int, ours: int, body: bytes, content_type: str) -> dict:
    peer_status, peer_body = post(peer, body, content_type)
    our_status, our_body = post(ours, body, content_type)
    assert peer_status == our_status == 200, (peer_body[:300], our_body[:300])
    theirs, mine = json.loads(peer_body), json.loads(our_body)
    same_answer(theirs, mine)
    return theirs


def test_colour_pngs_answer_the_same_and_right_on_both_stacks(peer, ours):
    pictures, labels = colour_pictures(18, width=90, height=60, seed=21)
    hits = 0
    for i, (picture, label) in enumerate(zip(pictures, labels, strict=True)):
        mode = ("RGB", "RGBA")[i % 2]
        answer = both(peer, ours, picture_png(picture, mode), "image/png")
        assert answer["class_name"] == COLOUR_CLASSES[answer["predicted_class"]]
        hits += answer["class_name"] == COLOUR_CLASSES[label]
    assert hits >= 15, f"{hits}/18 right: the archive did not load the trained weights"  # about 99% in-process
    for mode in ("L", "P"):  # grey and palette pictures: read as RGB on both, like the training job reads them
        both(peer, ours, picture_png(pictures[0], mode), "image/png")


def test_arrays_in_each_layout_answer_the_same(peer, ours):
    pictures, _ = colour_pictures(3, seed=22)
    for body, content_type in ((npy(pictures), "application/x-npy"),
                               (npy(pictures.transpose(0, 3, 1, 2)), "application/x-npy"),
                               (json.dumps(pictures[0].tolist()).encode(), "application/json"),
                               (json.dumps({"instances": pictures.transpose(0, 3, 1, 2).reshape(3, -1).tolist()}).encode(),
                                "application/json")):
        both(peer, ours, body, content_type)


def test_a_wrong_shape_is_a_client_error_on_both(peer, ours):
    body = json.dumps(np.zeros((28, 28), np.uint8).tolist()).encode()
    peer_status, peer_body = post(peer, body, "application/json")
    our_status, our_body = post(ours, body, "application/json")
    assert 400 <= peer_status < 500 and our_status == 400, (peer_status, peer_body[:300], our_body[:300])
