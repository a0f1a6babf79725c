"""TrainingInstanceCount > 1: the executor runs one container process per host (its own /opt/ml and
resourceconfig.json), train_cnn.py trains data-parallel over gloo, and two hosts reach the quality of one."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from mlops import staging, store
from mlops.local.runtime import CpuPool, NullReporter
from mlops.local.training import run_training_job
from pipelines.image_classification.pipeline import pytorch_image
from pipelines.source_bundle import code_location, collect_bundle
from tests.helpers import MNIST_DIR
from tests.helpers.jobs import run_job

pytestmark = [pytest.mark.fidelity, pytest.mark.slow]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        bundle = collect_bundle()
        staged = code_location("bucket", "multi", bundle)
        staging.stage_local(bundle, staged)
        data = tmp_path_factory.mktemp("slice")
        result = run_job("preprocess.py", ["--input-dir", str(MNIST_DIR), "--output-dir", str(data),
                                           "--max-train-samples", "10000", "--max-test-samples", "200"])
        assert result.returncode == 0, result.stderr
        for split in ("train", "validation"):
            store.upload_dir(data / split, f"s3://bucket/multi/data/{split}/")
        yield {"home": str(home), "code": staged.tarball_uri}


def _train(inputs: dict[str, str], work: Path, hosts: int) -> dict:
    request = {
        "AlgorithmSpecification": {"TrainingImage": pytorch_image("us-east-1", "training"),
                                   "TrainingInputMode": "File", "MetricDefinitions": [
                                       {"Name": "validation:accuracy", "Regex": r"val_accuracy=([0-9.eE+-]+);"}]},
        # float32: the test compares one host with two; bfloat16 rounding would add its own 0.3-point noise
        "HyperParameters": {"epochs": "5", "batch-size": "128", "lr": "0.05", "augment": '"false"',
                            "precision": '"fp32"',
                            "sagemaker_program": '"training/train_cnn.py"',
                            "sagemaker_submit_directory": json.dumps(inputs["code"])},
        "InputDataConfig": [{"ChannelName": split, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://bucket/multi/data/{split}/",
            "S3DataDistributionType": "FullyReplicated"}}} for split in ("train", "validation")],
        "OutputDataConfig": {"S3OutputPath": "s3://bucket/multi/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": hosts, "VolumeSizeInGB": 30},
        "StoppingCondition": {"MaxRuntimeInSeconds": 900},
    }
    return run_training_job(request, job_name=f"pipelines-multi-TrainCNN-h{hosts}", execution_id="multi",
                            step_name="TrainCNN", work_dir=work, log_path=work / "job.log", pool=CpuPool(2),
                            reporter=NullReporter(), progress_label="TrainCNN")


def test_two_hosts_train_as_one_and_only_the_leader_writes_the_model(inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", inputs["home"])
    one = _train(inputs, tmp_path / "one", 1)
    two = _train(inputs, tmp_path / "two", 2)
    accuracy = {n: {m["MetricName"]: m["Value"] for m in r["FinalMetricDataList"]}["validation:accuracy"]
                for n, r in (("one", one), ("two", two))}
    print("validation accuracy by hosts:", accuracy)
    assert accuracy["one"] > 0.9, accuracy
    # Two hosts reach one host's quality: at most 0.2 points below it. They may do better (the shared global
    # batch sees the shards in another order; CI measured 97.7% on one host and 98.3% on two).
    assert accuracy["two"] >= accuracy["one"] - 0.002, accuracy
    for index, host in enumerate(("algo-1", "algo-2"), start=1):
        config = json.loads((tmp_path / "two" / "hosts" / host / "input" / "config" / "resourceconfig.json")
                            .read_text())
        assert len(config["hosts"]) == 2 and config["current_host"] == config["hosts"][index - 1]
    assert any((tmp_path / "two" / "hosts" / "algo-1" / "model").iterdir())
    assert not any((tmp_path / "two" / "hosts" / "algo-2" / "model").iterdir())
    assert "host 2 of 2" in (tmp_path / "two" / "job-algo-2.log").read_text()
    with tarfile.open(store.s3_uri_to_path(two["ModelArtifacts"]["S3ModelArtifacts"])) as tar:
        assert {"model.pth", "model_config.json", "code/inference.py"} <= set(tar.getnames())
