"""The real definition run by ``mlops run`` on data the tests generate: an image folder given as a file:// URI
and CIFAR-10-format archives, the classes named by the data all the way to the registered model."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from inference import inference
from mlops.cli import main
from mlops.local import commands, records
from mlops.registry import LocalRegistry
from mlops.store import s3_uri_to_path
from tests.training.test_formats import make_cifar_binary, make_cifar_python, make_image_folder

SMALL = {"CnnEpochs": "12", "XGBoostNumRound": "10", "TuningMaxJobs": "1", "TuningMaxParallelJobs": "1",
         "AccuracyThreshold": "0.5"}
JOB_STEPS = {"Preprocess", "TrainCNN", "TrainXGBoost", "TuneCNN", "EvaluateBaseline", "Evaluate"}


def _run(**params: str) -> tuple[str, str]:
    argv = ["run"] + [item for name, value in {**SMALL, **params}.items() for item in ("--param", f"{name}={value}")]
    result = CliRunner().invoke(main, argv)
    return commands.list_executions()[0]["PipelineExecutionId"], result.output


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(tmp_path / "mlops"))
        patch.setenv("MLOPS_CPUS", "2")
        yield tmp_path / "mlops"


@pytest.mark.slow
def test_image_folder_from_a_file_uri_runs_end_to_end(home: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "my pets", {"cat": 150, "dog": 150, "owl": 150}, size=24, mode="L")
    execution_id, output = _run(InputDataUrl=f"file://{data.as_posix().replace(' ', '%20')}",
                                DataFormat="image-folder", ImageSize="28")
    steps = {s.step_name: s for s in records.list_steps(execution_id)}
    assert {n for n, s in steps.items() if s.status == "Succeeded"} >= JOB_STEPS, output
    assert "staged as s3://mlops-local/data/local/my-pets-" in output
    evaluation = steps["Evaluate"].metadata["PropertyFiles"]["EvaluationReport"]
    assert set(json.dumps(evaluation["multiclass_classification_metrics"]["confusion_matrix"])) and all(
        name in json.dumps(evaluation) for name in ("cat", "dog", "owl"))
    model_tar = s3_uri_to_path(steps["TrainCNN"].properties["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(model_tar) as tar:
        config = json.load(tar.extractfile("model_config.json"))
    assert config["class_names"] == ["cat", "dog", "owl"] and config["image_shape"] == [28, 28]
    assert commands.describe_execution(execution_id)["PipelineExecutionStatus"] == "Succeeded", output
    package = LocalRegistry().list_model_packages("image-classification")[0]
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == \
        steps["TrainCNN"].properties["ModelArtifacts"]["S3ModelArtifacts"]

    # the registered model's own serving code answers with the folder's class names
    served = tmp_path / "served"
    with tarfile.open(model_tar) as tar:
        tar.extractall(served, filter="data")
    model = inference.model_fn(str(served))
    owl = np.asarray(Image.open(data / "train" / "owl" / "0.jpg").convert("L").resize((28, 28)), dtype=float)
    body, _ = inference.output_fn(inference.predict_fn(
        inference.input_fn(json.dumps({"instances": [owl.tolist()]}), "application/json"), model), "application/json")
    answer = json.loads(body)["predictions"][0]
    assert answer["class_name"] == "owl", answer
    assert {entry["class_name"] for entry in answer["top_k"]} <= {"cat", "dog", "owl"}
    # the image file itself: a 28x28 image-folder model reads it as its training job did, not as an MNIST digit
    assert config["data_format"] == "image-folder" and not model.digit_input
    jpeg = (data / "train" / "owl" / "0.jpg").read_bytes()
    body, _ = inference.output_fn(inference.predict_fn(inference.input_fn(jpeg, "image/jpeg"), model), None)
    assert json.loads(body)["class_name"] == "owl", body


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["binary", "python"])
def test_cifar10_archive_preprocesses_trains_and_scores(home: Path, tmp_path: Path, variant: str) -> None:
    """Every job step on a generated CIFAR-10 .tar.gz: RGB 32x32 splits, a 3-channel CNN, both evaluations."""
    folder = (make_cifar_binary if variant == "binary" else make_cifar_python)(tmp_path / "src", per_batch=30)
    archive_dir = tmp_path / "upload"
    archive_dir.mkdir()
    with tarfile.open(archive_dir / "cifar-10.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    execution_id, output = _run(InputDataUrl=str(archive_dir), DataFormat="cifar10")
    steps = {s.step_name: s for s in records.list_steps(execution_id)}
    assert {n for n, s in steps.items() if s.status == "Succeeded"} >= JOB_STEPS, output
    model_tar = s3_uri_to_path(steps["TrainCNN"].properties["ModelArtifacts"]["S3ModelArtifacts"])
    with tarfile.open(model_tar) as tar:
        config = json.load(tar.extractfile("model_config.json"))
    assert config["image_shape"] == [3, 32, 32] and config["in_channels"] == 3
    assert config["class_names"][0] == "airplane"
