"""The real definition (pipelines/image_classification) run by ``mlops run`` on a slice of MNIST where the CNN learns.

The first execution must take the Register branch with a CNN that reads digits; the second, identical but for
AccuracyThreshold=1.0, must reuse every job from the cache, take the Fail branch, register nothing, and say why
with both figures.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.local import commands, records
from mlops.registry import LocalRegistry

SLICE = {"MaxTrainSamples": "6000", "MaxTestSamples": "1000", "CnnEpochs": "3", "XGBoostNumRound": "20",
         "TuningMaxJobs": "2", "TuningMaxParallelJobs": "2"}
JOB_STEPS = {"Preprocess", "TrainCNN", "TrainXGBoost", "TuneCNN", "EvaluateBaseline", "Evaluate"}


def _run(**params: str) -> tuple[str, str]:
    argv = ["run"] + [item for name, value in {**SLICE, **params}.items() for item in ("--param", f"{name}={value}")]
    result = CliRunner().invoke(main, argv)
    return commands.list_executions()[0]["PipelineExecutionId"], result.output


def _steps(execution_id: str) -> dict[str, records.StepRecord]:
    return {s.step_name: s for s in records.list_steps(execution_id)}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("mlops")
        patch.setenv("MLOPS_HOME", str(folder))
        patch.setenv("MLOPS_CPUS", "2")
        yield folder


@pytest.fixture(scope="module")
def registered(home: Path) -> tuple[str, str]:
    return _run(AccuracyThreshold="0.9")


@pytest.mark.slow
def test_the_cnn_learns_and_is_registered_pending_approval_with_its_metrics(registered):
    execution_id, output = registered
    assert commands.describe_execution(execution_id)["PipelineExecutionStatus"] == "Succeeded", output
    steps = _steps(execution_id)
    assert {name for name, s in steps.items() if s.status == "Succeeded"} == JOB_STEPS | {
        "CheckAccuracy", "Register-RegisterModel"}
    assert "FailAccuracy" not in steps
    evaluation = steps["Evaluate"].metadata["PropertyFiles"]["EvaluationReport"]
    accuracy = evaluation["multiclass_classification_metrics"]["accuracy"]["value"]
    assert accuracy >= 0.9, evaluation
    assert accuracy >= evaluation["baseline"]["multiclass_classification_metrics"]["accuracy"]["value"]

    packages = LocalRegistry().list_model_packages("image-classification")
    assert len(packages) == 1
    package = packages[0]
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert package["ModelPackageVersion"] == steps["Register-RegisterModel"].properties["ModelPackageVersion"]
    statistics = package["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["ContentType"] == "application/json" and statistics["S3Uri"].endswith("/evaluation.json")
    assert package["Metrics"]["accuracy"] == pytest.approx(accuracy)
    model_url = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    assert model_url == steps["TrainCNN"].properties["ModelArtifacts"]["S3ModelArtifacts"]

    trials = [j for j in records.list_jobs(execution_id, "TuneCNN") if j["job_type"] == "Training"]
    assert len(trials) == 2
    assert steps["TrainCNN"].properties["HyperParameters"]["epochs"] == "3"
    assert "confusion_matrix.png" in Path(commands.describe_execution(execution_id)["ReportPath"]).read_text()


@pytest.mark.slow
def test_below_the_threshold_nothing_is_registered_and_the_fail_step_says_why(registered):
    first, _ = registered
    execution_id, output = _run(AccuracyThreshold="1.0")
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Failed", output
    steps = _steps(execution_id)
    assert {name for name, s in steps.items() if s.cache_source == first} == JOB_STEPS  # nothing else changed
    assert steps["CheckAccuracy"].properties["Outcome"] == "False"
    assert "Register-RegisterModel" not in steps
    assert len(LocalRegistry().list_model_packages("image-classification")) == 1  # only the first execution's

    evaluation = steps["Evaluate"].metadata["PropertyFiles"]["EvaluationReport"]
    cnn = evaluation["multiclass_classification_metrics"]["accuracy"]["value"]
    baseline = evaluation["baseline"]["multiclass_classification_metrics"]["accuracy"]["value"]
    message = steps["FailAccuracy"].failure_reason
    assert described["FailureReason"] == message
    figures = [float(f) for f in re.findall(r"\d+\.\d+", message)]
    assert figures == [cnn, 1.0, baseline], message
    assert "the model was not registered" in message
    assert json.loads(json.dumps(described, default=str))["FailureReason"] in output


@pytest.mark.slow
@pytest.mark.fidelity
def test_every_job_started_through_its_images_launcher(registered):
    """The PyTorch jobs through sagemaker-training (SAGEMAKER_TRAINING_MODULE of the PyTorch image), XGBoost through
    sagemaker-containers' module rule: `python -m training.train_xgboost` after the package install."""
    execution_id, _ = registered
    steps = _steps(execution_id)
    cnn = Path(steps["TrainCNN"].log_path).read_text()
    assert "sagemaker_pytorch_container.training" in cnn and "Invoking user script" in cnn
    assert "-m mlops.local.containers pytorch" in cnn
    xgboost = Path(steps["TrainXGBoost"].log_path).read_text()
    assert "sagemaker-containers" in xgboost and "-m training.train_xgboost" in xgboost
    trials = [j for j in records.list_jobs(execution_id, "TuneCNN") if j["job_type"] == "Training"]
    assert all("sagemaker_pytorch_container" in Path(j["log_path"]).read_text() for j in trials)
    config = json.loads((Path(steps["TrainCNN"].work_dir) / "input" / "config" / "resourceconfig.json").read_text())
    assert config["hosts"] == ["algo-1"] and config["current_host"] == "algo-1"
