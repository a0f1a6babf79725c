"""Inference handlers: every content type, the MNIST conversion of arbitrary images, and each refusal's status."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from inference import inference as h
from inference.packaging import code_files
from tests.helpers.bad_requests import BAD_INPUTS
from tests.helpers.models import digit_png, load_mnist, write_cnn_model_dir, write_xgboost_model_dir


@pytest.fixture(scope="module")
def cnn_dir(tmp_path_factory):
    return write_cnn_model_dir(tmp_path_factory.mktemp("cnn"))  # random weights: mechanics, not accuracy


@pytest.fixture(scope="module")
def cnn(cnn_dir):
    return h.model_fn(str(cnn_dir))


@pytest.fixture(scope="module")
def xgb(tmp_path_factory):
    return h.model_fn(str(write_xgboost_model_dir(tmp_path_factory.mktemp("xgb"))))


@pytest.fixture(scope="module")
def mnist():
    return load_mnist("test", 120)


def answer(model, body, content_type, accept=None):
    text, content = h.output_fn(h.predict_fn(h.input_fn(body, content_type), model), accept)
    assert content == "application/json"
    return json.loads(text)


def status_of(call) -> int:
    with pytest.raises(h.InferenceError) as info:
        call()
    assert info.value.message  # every refusal says why
    return info.value.status_code


# -- model loading ------------------------------------------------------------------------------------------------

def test_fused_cnn_matches_the_trained_network(cnn_dir, cnn, mnist):
    import torch

    from training.models import build_model

    config = json.loads((cnn_dir / "model_config.json").read_text())
    plain = build_model("compact", 10, kernel_size=config["kernel_size"], width=config["width"],
                        dropout=config["dropout"])
    plain.load_state_dict(torch.load(cnn_dir / "model.pth", weights_only=True))
    plain.eval()
    images = mnist[0][:16].astype(np.float32)
    with torch.inference_mode():
        x = torch.from_numpy(cnn.normalise(images)).unsqueeze(1)
        expected = torch.softmax(plain(x), 1).numpy()
    assert np.allclose(cnn.predict_proba(images), expected, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cnn.predictor.modules())


def test_model_fn_names_the_broken_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        h.model_fn(str(tmp_path))
    (tmp_path / "model_config.json").write_text('{"framework": "sklearn", "num_classes": 10}')
    with pytest.raises(ValueError, match="framework 'sklearn'"):
        h.model_fn(str(tmp_path))


def test_code_dir_works_alone_as_in_the_sagemaker_container(cnn_dir):
    """Inside SageMaker only code/ is importable: inference.py must find models.py there, not training/."""
    assert set(code_files()) == {"inference.py", "models.py", "features.py", "requirements.txt"}
    assert "xgboost" in code_files("xgboost")["requirements.txt"].read_text()
    script = (
        "import sys; sys.path.insert(0, sys.argv[1] + '/code'); import inference, json\n"
        "m = inference.model_fn(sys.argv[1])\n"
        "b = inference.input_fn(json.dumps([[0] * 28] * 28), 'application/json')\n"
        "print(inference.output_fn(inference.predict_fn(b, m), 'application/json')[0])\n"
        "assert 'models' in sys.modules and 'training.models' not in sys.modules, sorted(sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(cnn_dir)], check=False, capture_output=True, text=True,
                         timeout=120, cwd=str(cnn_dir))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predicted_class"] in range(10)


# -- content types ------------------------------------------------------------------------------------------------

def test_json_single_flat_batch_and_instances_agree(cnn, mnist):
    images = mnist[0][:3]
    single = answer(cnn, json.dumps(images[0].tolist()), "application/json")
    flat = answer(cnn, json.dumps(images[0].reshape(-1).tolist()), "application/json; charset=utf-8")
    batch = answer(cnn, json.dumps(images.tolist()), "application/json")
    wrapped = answer(cnn, json.dumps({"instances": images.reshape(3, -1).tolist()}), "application/json")
    assert single == flat == batch["predictions"][0] == wrapped["predictions"][0]
    assert len(batch["predictions"]) == 3
    assert set(single) == {"predicted_class", "class_name", "confidence", "top_k"}
    assert single["class_name"] == str(single["predicted_class"])
    probs = [k["probability"] for k in single["top_k"]]
    assert probs == sorted(probs, reverse=True) and probs[0] == single["confidence"] and len(probs) == h.TOP_K


def test_npy_shapes(cnn, mnist):
    images = mnist[0][:4]

    def npy(array):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return buffer.getvalue()

    reference = answer(cnn, json.dumps(images.tolist()), "application/json")["predictions"]
    assert answer(cnn, npy(images[0]), "application/x-npy") == reference[0]
    assert answer(cnn, npy(images.astype(np.float64)), "application/x-npy")["predictions"] == reference
    assert answer(cnn, npy(images.reshape(4, 1, 28, 28)), "application/x-npy")["predictions"] == reference
    assert answer(cnn, npy(images.reshape(4, 784)), "application/x-npy")["predictions"] == reference


def test_png_28x28_is_read_exactly(cnn, mnist):
    image = mnist[0][0]
    from_png = answer(cnn, digit_png(image), "image/png")
    assert from_png == answer(cnn, json.dumps(image.tolist()), "application/json")


def test_xgboost_reads_digits_in_every_format(xgb, mnist):
    images, labels = mnist
    csv_body = "\n".join(",".join(str(v) for v in img.reshape(-1)) for img in images).encode()
    predicted = [p["predicted_class"] for p in answer(xgb, csv_body, "text/csv")["predictions"]]
    assert np.mean(np.array(predicted) == labels) >= 0.8
    single_row = answer(xgb, csv_body.split(b"\n")[0], "text/csv")
    assert single_row["predictions"][0]["predicted_class"] == predicted[0]
    assert answer(xgb, json.dumps(images[0].tolist()), "application/json")["predicted_class"] == predicted[0]


@pytest.mark.parametrize("variant", [
    {"size": 200, "invert": True, "rgb": True},  # a scanned / drawn digit: dark ink on white, colour, big
    {"size": 64},                                  # MNIST polarity, other size
    {"size": 100, "invert": True},
])
def test_images_of_any_size_and_polarity_become_mnist(xgb, mnist, variant):
    images, labels = mnist
    hits = [answer(xgb, digit_png(images[i], **variant), "image/png")["predicted_class"] == labels[i]
            for i in range(60)]
    assert np.mean(hits) >= 0.75, np.mean(hits)


def test_jpeg_and_transparent_png(xgb, mnist):
    images, labels = mnist
    hits_jpeg, hits_rgba = [], []
    for i in range(30):
        ink = Image.fromarray(images[i]).resize((140, 140))
        jpeg = io.BytesIO()
        Image.eval(ink, lambda v: 255 - v).convert("RGB").save(jpeg, format="JPEG", quality=90)
        hits_jpeg.append(answer(xgb, jpeg.getvalue(), "image/jpeg")["predicted_class"] == labels[i])
        rgba = Image.new("RGBA", ink.size, (0, 0, 0, 0))  # black ink on a transparent canvas
        rgba.putalpha(ink)
        png = io.BytesIO()
        rgba.save(png, format="PNG")
        hits_rgba.append(answer(xgb, png.getvalue(), "image/png")["predicted_class"] == labels[i])
    assert np.mean(hits_jpeg) >= 0.7 and np.mean(hits_rgba) >= 0.7, (np.mean(hits_jpeg), np.mean(hits_rgba))


def test_blank_image_is_a_valid_request(cnn):
    body = io.BytesIO()
    Image.new("L", (50, 30), 255).save(body, format="PNG")
    assert answer(cnn, body.getvalue(), "image/png")["predicted_class"] in range(10)


# -- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "body", "content_type", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_status(cnn, name, body, content_type, status):
    assert status_of(lambda: h.predict_fn(h.input_fn(body, content_type), cnn)) == status


def test_batch_over_limit_is_413(cnn):
    body = json.dumps(np.zeros((h.MAX_BATCH + 1, 784), np.uint8).tolist())
    batch = h.input_fn(body, "application/json")  # the batch size depends on the model's shape: model_input counts
    assert status_of(lambda: h.model_input(batch, cnn)) == 413


def test_unacceptable_accept_is_406(cnn, mnist):
    prediction = h.predict_fn(h.input_fn(digit_png(mnist[0][0]), "image/png"), cnn)
    assert status_of(lambda: h.output_fn(prediction, "text/csv")) == 406
    assert json.loads(h.output_fn(prediction, "text/html, application/json;q=0.9")[0])["top_k"]
    assert json.loads(h.output_fn(prediction, "*/*")[0])["top_k"]


def test_torchscript_and_eager_give_the_same_answers(cnn_dir, cnn, mnist, monkeypatch):
    import torch

    assert isinstance(cnn.predictor, torch.jit.ScriptModule)  # the fast path is really taken
    monkeypatch.setenv("MLOPS_TORCHSCRIPT", "0")
    eager = h.model_fn(str(cnn_dir))
    assert not isinstance(eager.predictor, torch.jit.ScriptModule)
    images = mnist[0][:8].astype(np.float32)
    for batch in (images[:1], images):
        assert np.allclose(eager.predict_proba(batch), cnn.predict_proba(batch), atol=1e-5)


@pytest.mark.parametrize(("grid", "kind"), [([["0", "255"] * 14] * 28, "string"), ([[True] * 28] * 28, "boolean"),
                                            ([None] * 784, "null"), ([[{"v": 1}] * 28] * 28, "object")])
def test_json_values_that_are_not_numbers_are_named(grid, kind):
    with pytest.raises(h.InferenceError) as info:
        h.input_fn(json.dumps(grid), "application/json")
    assert info.value.status_code == 400
    assert f"got a {kind}" in info.value.message and "JSON numbers 0..255" in info.value.message


def test_limits_are_named_and_checked_before_parsing():
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(h.InferenceError, match="nested 100000 levels deep; expected at most 8"):
        h.input_fn(deep, "application/json")
    header = repr({"descr": "<f8", "fortran_order": False, "shape": (100_000, 100_000)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
    with pytest.raises(h.InferenceError, match=r"80000000000 bytes, over the payload limit") as info:
        h.input_fn(npy, "application/x-npy")
    assert info.value.status_code == 413


@pytest.mark.parametrize("image_shape", [[3, 32, 32], [32, 32]])
def test_models_of_other_sizes_and_colour_load_and_score(tmp_path, image_shape):
    """CIFAR-10 and image-folder models: model_fn builds the network the config describes (channels, size) and
    predict_proba takes (N, C, H, W) or (N, H, W), as evaluate.py feeds it the split."""
    from tests.helpers.models import cnn_config, write_cnn_model_dir

    config = {**cnn_config(), "image_shape": image_shape, "class_names": [f"c{i}" for i in range(10)]}
    if len(image_shape) == 3:
        config["in_channels"] = image_shape[0]
    model = h.model_fn(str(write_cnn_model_dir(tmp_path, config=config)))
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, *image_shape)).astype(np.float32)
    probs = model.predict_proba(pixels)
    assert probs.shape == (5, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert model.image_shape == tuple(image_shape)
