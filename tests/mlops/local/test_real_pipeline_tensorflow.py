"""``mlops run --framework tensorflow`` on a slice of MNIST: the Keras CNN through the whole pipeline.

train_keras.py runs under the TensorFlow image's own launcher (sagemaker-tensorflow-training), the tuning trials
too; Evaluate scores the SavedModel through its handlers; the model registered is a TensorFlow Serving model whose
model.tar.gz the local endpoint's loader serves.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.local import commands, records
from mlops.registry import LocalRegistry
from mlops.store import s3_uri_to_path
from tests.helpers.models import load_mnist

SLICE = {"MaxTrainSamples": "3000", "MaxTestSamples": "500", "CnnEpochs": "8", "XGBoostNumRound": "20",
         "TuningMaxJobs": "2", "TuningMaxParallelJobs": "2", "AccuracyThreshold": "0.85"}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("mlops-tf")
        patch.setenv("MLOPS_HOME", str(folder))
        patch.setenv("MLOPS_CPUS", "2")
        yield folder


@pytest.fixture(scope="module")
def execution(home: Path) -> tuple[str, str]:
    argv = ["run", "--framework", "tensorflow"] + [item for name, value in SLICE.items()
                                                   for item in ("--param", f"{name}={value}")]
    result = CliRunner().invoke(main, argv)
    return commands.list_executions()[0]["PipelineExecutionId"], result.output


@pytest.mark.slow
@pytest.mark.fidelity
def test_tensorflow_pipeline_registers_a_tf_serving_model(execution, tmp_path):
    execution_id, output = execution
    assert commands.describe_execution(execution_id)["PipelineExecutionStatus"] == "Succeeded", output
    steps = {s.step_name: s for s in records.list_steps(execution_id)}
    assert steps["Register-RegisterModel"].status == "Succeeded"
    cnn_log = Path(steps["TrainCNN"].log_path).read_text()
    assert "-m mlops.local.containers tensorflow" in cnn_log and "training/train_keras.py" in cnn_log
    trials = [j for j in records.list_jobs(execution_id, "TuneCNN") if j["job_type"] == "Training"]
    assert len(trials) == 2 and all("train_keras" in Path(j["log_path"]).read_text() for j in trials)
    debug = steps["TrainCNN"].properties.get("DebugRuleEvaluationStatuses") or []
    assert len(debug) == 5 and all(s["RuleEvaluationStatus"] != "Error" for s in debug), debug

    package = LocalRegistry().list_model_packages("image-classification")[0]
    container = package["InferenceSpecification"]["Containers"][0]
    assert "tensorflow-inference:2.19-cpu" in container["Image"]
    evaluation = steps["Evaluate"].metadata["PropertyFiles"]["EvaluationReport"]
    assert evaluation["multiclass_classification_metrics"]["accuracy"]["value"] >= 0.85

    with tarfile.open(s3_uri_to_path(container["ModelDataUrl"])) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    from inference.tf_serving import TensorFlowModel

    served = TensorFlowModel(tmp_path / "model", threads=1)
    images, labels = load_mnist("test", limit=50)
    answer = json.loads(served.invoke(json.dumps(images.tolist()).encode(), "application/json")[0])
    correct = sum(a["predicted_class"] == int(y) for a, y in zip(answer["predictions"], labels, strict=True))
    assert correct >= 40
