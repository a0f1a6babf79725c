"""TensorFlow on a slice: train_keras.py as a job, its SavedModel served through its own handlers, the Debugger
trial it writes read by the local rules, evaluate.py scoring it, the local endpoint answering it.

One Keras model is trained once for the module (2,700 MNIST images, 3 epochs, Debugger + profiler configured)
as its own process with the SM_* variables of a job.
"""

from __future__ import annotations

import http.client
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from mlops.local.rules import ERROR, RuleRunner
from tests.helpers.bad_requests import BAD_INPUTS
from tests.helpers.images import digit_forms
from tests.helpers.jobs import run_job, training_env
from tests.helpers.models import load_mnist
from training.metrics import CNN_METRIC_DEFINITIONS, parse_metrics
from training.train_common import MIN_STEPS_PER_EPOCH

RULES = ["VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization", "LossNotDecreasing"]
HOOK_CONFIG = {
    "HookParameters": {"save_interval": "50"},
    "CollectionConfigurations": [
        {"CollectionName": "biases", "CollectionParameters": {"save_interval": "50"}},
        {"CollectionName": "gradients", "CollectionParameters": {"save_interval": "20"}},
        {"CollectionName": "losses", "CollectionParameters": {"train.save_interval": "10", "eval.save_interval": "1"}},
        {"CollectionName": "relu_input", "CollectionParameters": {"include_regex": ".*relu_input", "save_interval": "1",
                                                                  "end_step": "10", "reductions": "mean,variance,min,max"}},
        {"CollectionName": "relu_output", "CollectionParameters": {"include_regex": ".*relu_output",
                                                                   "save_interval": "50",
                                                                   "reductions": "mean,variance,min,max"}},
        {"CollectionName": "weights", "CollectionParameters": {"save_interval": "50"}},
    ],
}


@pytest.fixture(scope="module")
def keras_job(mnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("keras-job")
    config_dir = work / "input" / "config"
    config_dir.mkdir(parents=True)
    (config_dir / "debughookconfig.json").write_text(json.dumps({**HOOK_CONFIG, "LocalPath": str(work / "tensors")}))
    (config_dir / "profilerconfig.json").write_text(json.dumps({"ProfilingParameters": {
        "LocalPath": str(work / "profiler")}}))
    env = training_env(mnist_slice / "train", mnist_slice / "validation", work / "model", work / "output")
    env["SM_INPUT_CONFIG_DIR"] = str(config_dir)
    result = run_job("train_keras.py", ["--epochs", "3", "--batch-size", "64", "--lr", "0.05",
                                        "--model_dir", "/opt/ml/model"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"work": work, "model": work / "model", "log": result.stdout, "stderr": result.stderr}


@pytest.fixture(scope="module")
def served(keras_job):
    from inference.tf_serving import TensorFlowModel

    return TensorFlowModel(keras_job["model"], threads=1)


def test_job_writes_the_tf_serving_layout_and_the_metrics_lines(keras_job):
    model = keras_job["model"]
    assert (model / "1" / "saved_model.pb").is_file() and (model / "1" / "variables").is_dir()
    assert sorted(p.name for p in (model / "code").iterdir()) == ["features.py", "inference.py", "requirements.txt"]
    assert "Pillow" in (model / "code" / "requirements.txt").read_text()
    config = json.loads((model / "model_config.json").read_text())
    assert config["framework"] == "tensorflow" and config["image_shape"] == [28, 28]
    assert config["data_format"] == "idx"  # a digit model: the handlers read images with MNIST's recipe
    assert config["saved_model"] == {"version": "1", "signature": "serving_default", "input": "pixels",
                                     "output": "probabilities"}
    metrics = parse_metrics(keras_job["log"], CNN_METRIC_DEFINITIONS)
    assert metrics["epoch"] == [1.0, 2.0, 3.0]
    assert metrics["validation:accuracy"][-1] > 0.85, keras_job["log"]
    assert "model_dir from the launcher is not used" in keras_job["stderr"]
    history = json.loads((keras_job["work"] / "output" / "data" / "history.json").read_text())
    assert history["framework"] == "tensorflow" and len(history["epochs"]) == 3
    assert not list(model.glob(".staging*"))


def test_debugger_trial_is_read_by_the_local_rules(keras_job):
    """smdebug's own trial layout, every collection the five rules read, TRAIN and EVAL losses, and no Error."""
    from smdebug import modes
    from smdebug.trials import create_trial

    tensors = keras_job["work"] / "tensors"
    assert (tensors / "training_job_end.ts").is_file()
    trial = create_trial(str(tensors))
    assert trial.tensor_names(collection="losses") == ["loss"]
    assert len(trial.tensor("loss").steps(mode=modes.EVAL)) == 3  # one validation per epoch
    assert len(trial.tensor("loss").steps(mode=modes.TRAIN)) >= 10
    assert trial.tensor_names(collection="gradients") and trial.tensor_names(collection="weights")
    relu_inputs = trial.tensor_names(collection="relu_input")
    assert relu_inputs and all(name.endswith("_relu_input") for name in relu_inputs)
    assert trial.tensor(relu_inputs[0]).reduction_value(0, "variance") > 0
    runner = RuleRunner(tensors, [{"RuleConfigurationName": n, "RuleParameters": {"rule_to_invoke": n}}
                                  for n in RULES], "job")
    statuses = {s["RuleConfigurationName"]: s for s in runner.finish()}
    assert all(s["RuleEvaluationStatus"] != ERROR for s in statuses.values()), statuses
    assert statuses["VanishingGradient"]["RuleEvaluationStatus"] == "NoIssuesFound"
    steps = json.loads((keras_job["work"] / "profiler" / "framework" / "step_times.json").read_text())
    # --batch-size 64 on 2,700 images is lowered to 2700 // MIN_STEPS_PER_EPOCH = 54: 50 steps per epoch
    fitted = 2700 // MIN_STEPS_PER_EPOCH
    assert len(steps["steps"]) == 3 * math.ceil(2700 / fitted)
    assert f"batch-size 64 lowered to {fitted}" in keras_job["stderr"] + keras_job["log"]


def test_every_content_type_gets_the_same_answer(served):
    images, labels = load_mnist("test", limit=200)
    single = {}
    for i in range(len(images)):
        answer = json.loads(served.invoke(json.dumps(images[i].tolist()).encode(), "application/json")[0])
        if answer["predicted_class"] == labels[i] and answer["confidence"] > 0.9:
            single = {"digit": images[i], "label": int(labels[i])}
            break
    assert single, "the slice-trained model reads no test digit confidently"
    for name, (body, content_type) in digit_forms(single["digit"]).items():
        answer = json.loads(served.invoke(body, content_type)[0])
        assert answer["predicted_class"] == single["label"], name
        assert answer["class_name"] == str(single["label"]) and len(answer["top_k"]) == 3
    batch = io.BytesIO()
    np.save(batch, images[:5].astype(np.uint8))
    answers = json.loads(served.invoke(batch.getvalue(), "application/x-npy")[0])["predictions"]
    assert len(answers) == 5
    csv = "\n".join(",".join(str(int(v)) for v in image.reshape(-1)) for image in images[:2]).encode()
    assert len(json.loads(served.invoke(csv, "text/csv")[0])["predictions"]) == 2


@pytest.mark.parametrize(("name", "body", "content_type", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_requests_get_the_pytorch_models_status(served, name, body, content_type, status):
    with pytest.raises(served.errors) as caught:
        served.invoke(body, content_type)
    assert caught.value.status_code == status, f"{name}: {caught.value}"


def test_input_handler_fits_requests_as_pytorch_does(served):
    """Any size and colour: input_handler sends TF Serving what model_input gives a PyTorch model of that config."""
    from PIL import Image

    from inference import inference

    digit = load_mnist("test", limit=1)[0][0].astype(np.uint8)
    photo = io.BytesIO()  # dark ink on a light background, RGB, 90x70: MNIST's recipe turns it into a 28x28 digit
    Image.fromarray(255 - digit).resize((90, 70)).convert("RGB").save(photo, "PNG")
    model = inference.LoadedModel(served.config, None, "tensorflow")
    for body, content_type in ((photo.getvalue(), "image/png"),
                               (json.dumps(digit[..., None].tolist()).encode(), "application/json")):  # (28, 28, 1)
        request = json.loads(served.handlers.input_handler(io.BytesIO(body), served.context(content_type, None)))
        expected = inference.model_input(inference.input_fn(body, content_type), model)
        assert expected.shape == (1, 28, 28)
        np.testing.assert_allclose(np.asarray(request["inputs"]), expected, atol=1e-3)


def test_tf_serving_predict_bodies(served):
    """Row and columnar requests, and what TF Serving refuses (400 with an error)."""
    from inference.tf_serving import SavedModelServer

    server: SavedModelServer = served.server
    pixels = np.zeros((2, 28, 28)).tolist()
    rows = server.predict(json.dumps({"instances": pixels}))
    assert rows.status_code == 200 and np.asarray(rows.json()["predictions"]).shape == (2, 10)
    columns = server.predict(json.dumps({"inputs": {"pixels": pixels}}))
    assert columns.status_code == 200 and np.asarray(columns.json()["outputs"]).shape == (2, 10)
    for body in ("{", "[]", json.dumps({"instances": []}), json.dumps({"instances": [[1, 2]]}),
                 json.dumps({"instances": pixels, "signature_name": "nope"}), json.dumps({"both": 1})):
        refused = server.predict(body)
        assert refused.status_code == 400 and refused.json()["error"], body
    with pytest.raises(served.errors) as caught:  # output_handler on a TF Serving error
        served.handlers.output_handler(server.predict("{"), served.context("application/json", None))
    assert caught.value.status_code == 400


def test_evaluate_scores_the_saved_model_through_its_handlers(keras_job, mnist_slice, tmp_path):
    result = run_job("evaluate.py", ["--model-dir", str(keras_job["model"]), "--test-dir", str(mnist_slice / "test"),
                                     "--output-dir", str(tmp_path / "evaluation"), "--bootstrap-rounds", "5"])
    assert result.returncode == 0, result.stderr[-2000:]
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["model"] == "cnn" and evaluation["test_samples"] == 1000
    assert evaluation["multiclass_classification_metrics"]["accuracy"]["value"] > 0.85


def test_local_endpoint_serves_the_tensorflow_model(keras_job):
    from tests.helpers.serving import serving

    images, labels = load_mnist("test", limit=20)
    with serving(keras_job["model"], "--workers", "1", timeout=180) as (port, _):
        def post(body: bytes, content_type: str | None, accept: str | None = None) -> tuple[int, dict]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
            conn.request("POST", "/invocations", body=body, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/ping")
        assert json.loads(conn.getresponse().read()) == {"status": "healthy", "framework": "tensorflow"}
        status, answer = post(json.dumps(images.tolist()).encode(), "application/json")
        assert status == 200
        correct = sum(a["predicted_class"] == int(y) for a, y in zip(answer["predictions"], labels, strict=True))
        assert correct >= 16
        for name, body, content_type, expected in BAD_INPUTS[:12]:
            status, answer = post(body, content_type)
            assert (status, answer["status"]) == (expected, expected), name
        assert post(json.dumps(images[0].tolist()).encode(), "application/json", "text/html")[0] == 406


def test_keras_architectures_for_channels_and_sizes():
    """Every architecture on 1 and 3 channels and several sizes: logits of the class count; the lists agree."""
    from training import keras_models, models, train_common

    assert models.ARCHITECTURES == train_common.ARCHITECTURES
    assert keras_models.ARCHITECTURES == tuple(a for a in models.ARCHITECTURES if a != "resnet18")  # PyTorch only
    for architecture in keras_models.ARCHITECTURES:
        for channels, size in ((1, 28), (3, 32), (1, 20)):
            model = keras_models.build_keras_model(architecture, 7, in_channels=channels, image_size=size)
            out = model(np.zeros((2, size, size, channels), np.float32))
            assert tuple(out.shape) == (2, 7), (architecture, channels, size)
            assert keras_models.relu_layers(model)
    with pytest.raises(ValueError):
        keras_models.build_keras_model("compact", 10, kernel_size=4)
    with pytest.raises(ValueError):
        keras_models.build_keras_model("resnet", 10)


def test_bad_hyperparameters_fail_the_job_with_a_reason(mnist_slice, tmp_path):
    env = training_env(mnist_slice / "train", mnist_slice / "validation", tmp_path / "model", tmp_path / "out")
    result = run_job("train_keras.py", ["--architecture", "vgg"], {**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    assert "architecture must be one of" in (tmp_path / "out" / "failure").read_text()
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())
    result = run_job("train_keras.py", ["--architecture", "resnet18"], {**env, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    assert "PyTorch only" in (tmp_path / "out" / "failure").read_text()
    assert os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION") == "python"
