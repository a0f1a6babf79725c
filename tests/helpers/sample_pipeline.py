"""A small pipeline definition with tiny job scripts, for the executor's tests and benchmark.

It has the shape of the real one (processing -> two trainings in parallel -> tuning -> evaluation with a
PropertyFile -> condition -> register, else fail) and is written as the SDK writes definitions, but its
jobs take well under a second, so the executor's own behaviour can be exercised and timed.
Knobs are pipeline parameters: ``Sleep`` (seconds per epoch), ``FailStep`` (name of a job that should
exit 1), ``Threshold`` (accuracy the condition needs), ``Epochs``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from mlops import store

BUCKET = "sample-bucket"
CODE_PREFIX = "sample/code/v1"

_COMMON = '''
import argparse, json, os, sys, time
from pathlib import Path
'''

PREP = _COMMON + '''
p = argparse.ArgumentParser()
p.add_argument("--input-dir"); p.add_argument("--output-dir"); p.add_argument("--fail", default="")
a = p.parse_args()
if a.fail == "Prep":
    print("prep: failing on purpose", file=sys.stderr); sys.exit(1)
numbers = [float(x) for f in sorted(Path(a.input_dir).glob("*.txt")) for x in f.read_text().split()]
for split, values in (("train", numbers[::2]), ("test", numbers[1::2])):
    out = Path(a.output_dir) / split
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.json").write_text(json.dumps(values))
print(f"prep: {len(numbers)} numbers")
'''

TRAIN = _COMMON + '''
p = argparse.ArgumentParser()
p.add_argument("--epochs", type=int, default=2); p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--sleep", type=float, default=0.0); p.add_argument("--fail", default="")
p.add_argument("--name", default="model"); p.add_argument("--crash-once", default="")
a, unknown = p.parse_known_args()
if a.fail == a.name:
    print(f"{a.name}: failing on purpose", file=sys.stderr)
    Path(os.environ["SM_OUTPUT_DIR"], "failure").write_text(f"{a.name} was told to fail")
    sys.exit(1)
if a.crash_once:
    marker = Path(a.crash_once)
    if not marker.exists():
        marker.write_text("crashed")
        os.kill(os.getpid(), 9)
data = json.loads(Path(os.environ["SM_CHANNEL_TRAIN"], "data.json").read_text())
assert os.environ["SM_NUM_GPUS"] == "0" and json.loads(os.environ["SM_HOSTS"]) == ["algo-1"]
acc = 0.5
for epoch in range(1, a.epochs + 1):
    time.sleep(a.sleep)
    acc = 1 - 0.5 / (1 + epoch * a.lr * 10)
    print(f"metrics: epoch={epoch}; train_loss={1 - acc:.6f}; val_loss={1 - acc:.6f}; val_accuracy={acc:.6f};")
model = Path(os.environ["SM_MODEL_DIR"]); model.mkdir(parents=True, exist_ok=True)
(model / "model.json").write_text(json.dumps({"name": a.name, "accuracy": acc, "n": len(data),
                                               "cpus": os.environ["SM_NUM_CPUS"]}))
out = Path(os.environ["SM_OUTPUT_DATA_DIR"]); out.mkdir(parents=True, exist_ok=True)
(out / "history.json").write_text(json.dumps({"accuracy": acc}))
'''

EVALUATE = _COMMON + '''
import tarfile
p = argparse.ArgumentParser()
p.add_argument("--model-a"); p.add_argument("--model-b"); p.add_argument("--output-dir"); p.add_argument("--fail", default="")
a = p.parse_args()
if a.fail == "Evaluate":
    print("evaluate: failing on purpose", file=sys.stderr); sys.exit(1)
def load(folder):
    with tarfile.open(Path(folder) / "model.tar.gz") as tar:
        return json.load(tar.extractfile("model.json"))
cnn, base = load(a.model_a), load(a.model_b)
report = {"multiclass_classification_metrics": {"accuracy": {"value": cnn["accuracy"], "standard_deviation": 0}},
          "baseline": {"multiclass_classification_metrics": {"accuracy": {"value": base["accuracy"]}}}}
out = Path(a.output_dir); out.mkdir(parents=True, exist_ok=True)
(out / "evaluation.json").write_text(json.dumps(report))
'''

SCRIPTS = {"training/prep.py": PREP, "training/train.py": TRAIN, "training/evaluate.py": EVALUATE}


def stage(bucket: str = BUCKET, prefix: str = CODE_PREFIX) -> dict[str, str]:
    """Write the code (tarball for training, unpacked files for processing) and input data into the store."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, text in SCRIPTS.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tarball = f"s3://{bucket}/{prefix}/sourcedir.tar.gz"
    store.put_bytes(tarball, raw.getvalue())
    for name, text in SCRIPTS.items():
        store.put_bytes(f"s3://{bucket}/{prefix}/source/{name}", text.encode())
    store.put_bytes(f"s3://{bucket}/sample/data/numbers.txt", " ".join(str(i) for i in range(40)).encode())
    return {"tarball": tarball, "source": f"s3://{bucket}/{prefix}/source/", "data": f"s3://{bucket}/sample/data/"}


def _join(*values: Any) -> dict[str, Any]:
    return {"Std:Join": {"On": "/", "Values": list(values)}}


def _text(name: str) -> dict[str, Any]:
    return {"Std:Join": {"On": "", "Values": [{"Get": f"Parameters.{name}"}]}}


def _input(name: str, uri: Any, local: str) -> dict[str, Any]:
    return {"InputName": name, "AppManaged": False,
            "S3Input": {"S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File",
                        "S3DataDistributionType": "FullyReplicated", "S3CompressionType": "None"}}


def _output(name: str, local: str, step: str) -> dict[str, Any]:
    return {"OutputName": name, "AppManaged": False,
            "S3Output": {"S3Uri": _join("s3:/", BUCKET, "sample", {"Get": "Execution.PipelineExecutionId"}, step,
                                        "output", name),
                         "LocalPath": local, "S3UploadMode": "EndOfJob"}}


METRICS = [{"Name": "train:loss", "Regex": "train_loss=([0-9.eE+-]+);"},
           {"Name": "validation:accuracy", "Regex": "val_accuracy=([0-9.eE+-]+);"},
           {"Name": "epoch", "Regex": "epoch=([0-9]+);"}]


def _channels() -> list[dict[str, Any]]:
    return [{"ChannelName": "train", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3DataDistributionType": "FullyReplicated",
        "S3Uri": {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"}}}}]


def _training_args(uris: dict[str, str], name: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": "local", "MetricDefinitions": METRICS},
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/sample/models/{name.lower()}"},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        "ResourceConfig": {"VolumeSizeInGB": 30, "InstanceCount": 1, "InstanceType": "ml.m5.xlarge"},
        "RoleArn": "arn:aws:iam::000000000000:role/sample",
        "InputDataConfig": _channels(),
        "HyperParameters": {
            "epochs": _text("Epochs"), "sleep": _text("Sleep"), "fail": {"Get": "Parameters.FailStep"},
            "name": f'"{name}"', **extra,
            "sagemaker_submit_directory": f'"{uris["tarball"]}"', "sagemaker_program": '"training/train.py"',
            "sagemaker_container_log_level": "20", "sagemaker_job_name": '"train-2026-01-01-00-00-00-000"',
        },
    }


def definition(uris: dict[str, str], *, cache: bool = True, retry_policies: list[dict[str, Any]] | None = None,
               tuning_jobs: int = 3) -> dict[str, Any]:
    """The sample definition (SDK-shaped JSON)."""
    cache_config = {"CacheConfig": {"Enabled": True, "ExpireAfter": "P30D"}} if cache else {}
    retries = {"RetryPolicies": retry_policies} if retry_policies else {}
    processing_common = {
        "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1,
                                                  "VolumeSizeInGB": 30}},
        "RoleArn": "arn:aws:iam::000000000000:role/sample",
        "Environment": {"PYTHONUNBUFFERED": "1"},
    }
    prep = {
        "Name": "Prep", "Type": "Processing", **cache_config, **retries,
        "Arguments": {
            **processing_common,
            "AppSpecification": {"ImageUri": "local",
                                 "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/training/prep.py"],
                                 "ContainerArguments": ["--input-dir", "/opt/ml/processing/input/raw",
                                                        "--output-dir=/opt/ml/processing/output",
                                                        "--fail", {"Get": "Parameters.FailStep"}]},
            "ProcessingInputs": [_input("code", uris["source"], "/opt/ml/processing/input/code"),
                                 _input("raw", {"Get": "Parameters.InputData"}, "/opt/ml/processing/input/raw")],
            "ProcessingOutputConfig": {"Outputs": [_output("train", "/opt/ml/processing/output/train", "Prep"),
                                                   _output("test", "/opt/ml/processing/output/test", "Prep")]},
        },
    }
    train_a = {"Name": "TrainA", "Type": "Training", **cache_config, **retries,
               "Arguments": _training_args(uris, "TrainA", {"lr": _text("LearningRate"),
                                                            "crash-once": {"Get": "Parameters.CrashOnce"}})}
    train_b = {"Name": "TrainB", "Type": "Training", **cache_config, **retries,
               "Arguments": _training_args(uris, "TrainB", {"lr": "0.01"})}
    tune_static = _training_args(uris, "Tune", {})
    tune = {
        "Name": "Tune", "Type": "Tuning", **cache_config,
        "Arguments": {
            "HyperParameterTuningJobConfig": {
                "Strategy": "Random",
                "ResourceLimits": {"MaxNumberOfTrainingJobs": tuning_jobs, "MaxParallelTrainingJobs": 2},
                "TrainingJobEarlyStoppingType": "Off",
                "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:accuracy"},
                "ParameterRanges": {
                    "ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.01", "MaxValue": "1.0",
                                                   "ScalingType": "Logarithmic"}],
                    "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "1", "MaxValue": "3",
                                                "ScalingType": "Auto"}],
                    "CategoricalParameterRanges": [{"Name": "width", "Values": ['"8"', '"16"']}],
                },
            },
            "TrainingJobDefinition": {
                "StaticHyperParameters": {k: v for k, v in tune_static["HyperParameters"].items() if k != "epochs"},
                "RoleArn": tune_static["RoleArn"],
                "OutputDataConfig": tune_static["OutputDataConfig"],
                "StoppingCondition": tune_static["StoppingCondition"],
                "HyperParameterTuningResourceConfig": tune_static["ResourceConfig"],
                "AlgorithmSpecification": tune_static["AlgorithmSpecification"],
                "InputDataConfig": _channels(),
            },
        },
    }
    evaluate = {
        "Name": "Evaluate", "Type": "Processing", **cache_config, **retries,
        "DependsOn": ["Tune"],
        "Arguments": {
            **processing_common,
            "AppSpecification": {
                "ImageUri": "local",
                "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/training/evaluate.py"],
                "ContainerArguments": ["--model-a", "/opt/ml/processing/model/a", "--model-b",
                                       "/opt/ml/processing/model/b", "--output-dir", "/opt/ml/processing/evaluation",
                                       "--fail", {"Get": "Parameters.FailStep"}]},
            "ProcessingInputs": [
                _input("code", uris["source"], "/opt/ml/processing/input/code"),
                _input("model-a", _join("s3:/", BUCKET, "sample/models/tune",
                                        {"Get": "Steps.Tune.TrainingJobSummaries[0].TrainingJobName"},
                                        "output/model.tar.gz"), "/opt/ml/processing/model/a"),
                _input("model-b", {"Get": "Steps.TrainB.ModelArtifacts.S3ModelArtifacts"},
                       "/opt/ml/processing/model/b"),
                _input("test", {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"},
                       "/opt/ml/processing/test"),
            ],
            "ProcessingOutputConfig": {"Outputs": [_output("evaluation", "/opt/ml/processing/evaluation",
                                                           "Evaluate")]},
        },
        "PropertyFiles": [{"PropertyFileName": "EvaluationReport", "OutputName": "evaluation",
                           "FilePath": "evaluation.json"}],
    }
    accuracy = {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
                                "Path": "multiclass_classification_metrics.accuracy.value"}}
    register = {
        "Name": "Register-RegisterModel", "Type": "RegisterModel",
        "Arguments": {
            "ModelPackageGroupName": "sample-models",
            "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": _join(
                {"Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"},
                "evaluation.json")}}, "Bias": {}, "Explainability": {}},
            "InferenceSpecification": {
                "Containers": [{"Image": "local-inference", "Environment": {},
                                "ModelDataUrl": {"Get": "Steps.TrainA.ModelArtifacts.S3ModelArtifacts"}}],
                "SupportedContentTypes": ["application/json"], "SupportedResponseMIMETypes": ["application/json"],
                "SupportedRealtimeInferenceInstanceTypes": ["ml.m5.large"],
                "SupportedTransformInstanceTypes": ["ml.m5.large"]},
            "ModelApprovalStatus": {"Get": "Parameters.ModelApprovalStatus"},
            "SkipModelValidation": "None",
        },
    }
    fail = {"Name": "AccuracyTooLow", "Type": "Fail", "Arguments": {"ErrorMessage": {"Std:Join": {
        "On": " ", "Values": ["accuracy", accuracy, "is below", {"Get": "Parameters.Threshold"}]}}}}
    check = {
        "Name": "Check", "Type": "Condition",
        "Arguments": {
            "Conditions": [{"Type": "GreaterThanOrEqualTo", "LeftValue": accuracy,
                            "RightValue": {"Get": "Parameters.Threshold"}},
                           {"Type": "Not", "Condition": {"Type": "Equals", "LeftValue": {"Get": "Parameters.FailStep"},
                                                         "RightValue": "Check"}}],
            "IfSteps": [register],
            "ElseSteps": [fail],
        },
    }
    return {
        "Version": "2020-12-01",
        "Metadata": {},
        "Parameters": [
            {"Name": "InputData", "Type": "String", "DefaultValue": uris["data"]},
            {"Name": "Epochs", "Type": "Integer", "DefaultValue": 2},
            {"Name": "LearningRate", "Type": "Float", "DefaultValue": 0.1},
            {"Name": "Sleep", "Type": "Float", "DefaultValue": 0.0},
            {"Name": "FailStep", "Type": "String", "DefaultValue": "none"},
            {"Name": "CrashOnce", "Type": "String", "DefaultValue": ""},
            {"Name": "Threshold", "Type": "Float", "DefaultValue": 0.5},
            {"Name": "ModelApprovalStatus", "Type": "String", "DefaultValue": "PendingManualApproval",
             "EnumValues": ["PendingManualApproval", "Approved", "Rejected"]},
        ],
        "PipelineExperimentConfig": {"ExperimentName": {"Get": "Execution.PipelineName"},
                                     "TrialName": {"Get": "Execution.PipelineExecutionId"}},
        "Steps": [prep, train_a, train_b, tune, evaluate, check],
    }


def model_path(uri: str) -> Path:
    return store.s3_uri_to_path(uri)
