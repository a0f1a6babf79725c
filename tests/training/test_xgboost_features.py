"""The XGBoost baseline on large images: area downsampling to at most 32x32 per channel (training/features.py),
recorded as ``xgboost_input`` by train_xgboost.py and applied by the endpoint, so served answers are the booster's
answers on the features it was trained on."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from inference import inference as h
from tests.helpers import ROOT
from tests.helpers.jobs import training_env
from training.datasets import load_manifest, load_split
from training.features import MAX_SIDE, area_downsample, area_weights, target_size, xgboost_features, xgboost_input

RNG = np.random.default_rng(7)


def exact_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging by supersampling: repeat pixels up to the common multiple, then take whole-block means."""
    h_in, w_in = image.shape
    lh, lw = math.lcm(h_in, height), math.lcm(w_in, width)
    fine = np.repeat(np.repeat(image.astype(np.float64), lh // h_in, axis=0), lw // w_in, axis=1)
    return fine.reshape(height, lh // height, width, lw // width).mean(axis=(1, 3))


# -- downsampling on known arrays ---------------------------------------------------------------------------------

def test_area_weights_of_a_known_row():
    # 3 pixels -> 2: output 0 covers [0, 1.5) = pixel 0 and half of pixel 1; output 1 the other half and pixel 2
    weights = area_weights(3, 2)
    assert np.allclose(weights, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    assert np.allclose(weights @ np.array([0.0, 3.0, 6.0]), [1.0, 5.0])
    assert np.allclose(area_weights(64, 32).sum(axis=1), 1.0)


def test_whole_blocks_are_block_means_and_match_pillow_box():
    image = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    reduced = area_downsample(image, 32, 32)
    assert reduced.shape == (32, 32)
    assert reduced[0, 0] == np.mean([0, 1, 64, 65]) and reduced[31, 31] == np.mean([4030, 4031, 4094, 4095])
    assert np.array_equal(reduced, image.reshape(32, 2, 32, 2).mean(axis=(1, 3)))
    box = np.asarray(Image.fromarray(image, mode="F").resize((32, 32), Image.Resampling.BOX))
    assert np.allclose(reduced, box, atol=1e-3)


@pytest.mark.parametrize(("size", "out"), [((48, 48), (32, 32)), ((100, 100), (32, 32)), ((33, 40), (26, 32)),
                                           ((224, 160), (32, 23))])
def test_fractional_areas_are_weighted_exactly(size, out):
    image = RNG.integers(0, 256, size=size).astype(np.float32)
    assert target_size(*size) == out
    assert np.allclose(area_downsample(image, *out), exact_area(image, *out), atol=1e-3)


def test_small_images_are_kept_and_large_ones_recorded():
    assert xgboost_input([28, 28]) is None and xgboost_input([3, 32, 32]) is None
    assert xgboost_input([64, 64]) == {"size": MAX_SIDE, "channels": 1}
    assert xgboost_input([3, 64, 64]) == {"size": MAX_SIDE, "channels": 3}
    images = RNG.normal(size=(5, 3, 32, 32)).astype(np.float32)
    assert np.array_equal(xgboost_features(images, None), images.reshape(5, -1))


def test_features_are_per_channel_linear_and_chunked():
    images = RNG.integers(0, 256, size=(3, 3, 64, 64)).astype(np.float32)
    spec = xgboost_input(images.shape[1:])
    rows = xgboost_features(images, spec)
    assert rows.shape == (3, 3 * 32 * 32) and rows.dtype == np.float32
    for n in range(3):  # channel-major: all of channel 0, then channel 1, then channel 2
        for c in range(3):
            expected = images[n, c].reshape(32, 2, 32, 2).mean(axis=(1, 3)).reshape(-1)
            assert np.allclose(rows[n, c * 1024: (c + 1) * 1024], expected, atol=1e-4)
    # linear, so it commutes with the normalisation: training reduces normalised splits, the endpoint requests
    scale, mean, std = 1 / 255, 0.47, 0.25
    assert np.allclose(xgboost_features((images * scale - mean) / std, spec), (rows * scale - mean) / std, atol=1e-5)
    constant = np.full((2, 1, 100, 70), 42.0, np.float32)
    assert np.allclose(xgboost_features(constant, xgboost_input([100, 70])), 42.0)
    many = RNG.normal(size=(2500, 1, 40, 40)).astype(np.float32)  # more than one chunk of 1024
    one_by_one = np.concatenate([xgboost_features(many[i: i + 1], {"size": 32}) for i in (0, 1500, 2499)])
    assert np.allclose(xgboost_features(many, {"size": 32})[[0, 1500, 2499]], one_by_one, atol=1e-6)
    assert xgboost_features(many[:0], {"size": 32}).shape == (0, 32 * 32)


# -- train_xgboost on 64x64 images, then served -------------------------------------------------------------------

def _pattern(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 64x64 RGB image whose class shows at any scale: a bright left half, top half or red centre."""
    image = np.clip(rng.normal(60, 25, size=(64, 64, 3)), 0, 255)
    if label == 0:
        image[:, :32] += 120
    elif label == 1:
        image[:32, :] += 120
    else:
        image[16:48, 16:48, 0] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def xgboost_64(tmp_path_factory, run_job_script) -> dict:
    root = tmp_path_factory.mktemp("xgb64")
    rng = np.random.default_rng(0)
    names = ["a-left", "b-top", "c-red"]  # class names are the sorted folder names
    for label, name in enumerate(names):
        folder = root / "raw" / "train" / name
        folder.mkdir(parents=True)
        for i in range(24):
            Image.fromarray(_pattern(label, rng)).save(folder / f"{i}.png")
    data = root / "data"
    result = run_job_script("preprocess.py", ["--input-dir", str(root / "raw"), "--output-dir", str(data),
                                              "--image-size", "64"])
    assert result.returncode == 0, result.stderr
    model_dir = root / "model"
    env = training_env(data / "train", data / "validation", model_dir, root / "output")
    result = run_job_script("train_xgboost.py", ["--num-round", "20", "--max-depth", "3", "--log-every", "5",
                                                 "--nthread", "1"], env)
    assert result.returncode == 0, result.stderr
    return {"data": data, "model": model_dir, "names": names, "log": result.stdout + result.stderr}


def test_train_xgboost_records_the_downsampling(xgboost_64):
    config = json.loads((xgboost_64["model"] / "model_config.json").read_text())
    assert config["image_shape"] == [3, 64, 64] and config["data_format"] == "image-folder"
    assert config["xgboost_input"] == {"size": 32, "channels": 3}
    assert config["class_names"] == xgboost_64["names"]
    assert (xgboost_64["model"] / "code" / "features.py").read_text() == (ROOT / "training" / "features.py").read_text()
    import xgboost

    booster = xgboost.Booster(model_file=str(xgboost_64["model"] / "xgboost-model.json"))
    assert booster.num_features() == 3 * 32 * 32  # trained on the reduced images, not 3x64x64 = 12,288 pixels


def test_the_served_model_scores_64x64_images(xgboost_64):
    import xgboost

    model = h.model_fn(str(xgboost_64["model"]))
    assert model.xgboost_input == {"size": 32, "channels": 3}
    test = load_split(xgboost_64["data"] / "test", "test")
    norm = load_manifest(xgboost_64["data"] / "test")["normalization"]
    raw = np.clip(np.rint((test.images * norm["std"] + norm["mean"]) / norm["scale"]), 0, 255).astype(np.uint8)
    booster = xgboost.Booster(model_file=str(xgboost_64["model"] / "xgboost-model.json"))
    trained_on = xgboost_features(test.images, model.xgboost_input)  # what train_xgboost fed the trees
    served, names = [], []
    for image in raw:
        png = io.BytesIO()
        Image.fromarray(image.transpose(1, 2, 0)).save(png, format="PNG")
        text, _ = h.output_fn(h.predict_fn(h.input_fn(png.getvalue(), "image/png"), model), "application/json")
        names.append(json.loads(text)["class_name"])
        served.append(h.model_input(h.input_fn(json.dumps(image.tolist()), "application/json"), model)[0])
    served_rows = xgboost_features(model.normalise(np.stack(served)), model.xgboost_input)
    assert np.allclose(served_rows, trained_on, atol=1e-4)  # the endpoint rebuilds the training features
    expected = booster.inplace_predict(trained_on).argmax(1)
    assert np.mean(model.predict_proba(np.stack(served)).argmax(1) == expected) >= 0.95
    labels = [xgboost_64["names"][label] for label in test.labels]
    accuracy = np.mean([a == b for a, b in zip(names, labels, strict=True)])
    assert accuracy >= 0.9, (accuracy, names, labels)


def test_the_code_dir_alone_serves_it_as_in_the_sagemaker_container(xgboost_64):
    """Inside SageMaker only code/ is importable: inference.py must find features.py there, not training/."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1] + '/code'); import inference, json, numpy as np\n"
        "m = inference.model_fn(sys.argv[1])\n"
        "b = inference.input_fn(json.dumps(np.zeros((2, 64, 64, 3)).tolist()), 'application/json')\n"
        "print(inference.output_fn(inference.predict_fn(b, m), 'application/json')[0])\n"
        "assert 'features' in sys.modules and 'training.features' not in sys.modules, sorted(sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(xgboost_64["model"])], check=False, capture_output=True,
                         text=True, timeout=120, cwd=str(xgboost_64["model"]))
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["predictions"]) == 2
