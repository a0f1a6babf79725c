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

JOBS_DIR = Path(__file__).resolve().parent / "sample_jobs"  # the bundle's root: training/{prep,train,evaluate}.py
SCRIPTS = sorted(path.relative_to(JOBS_DIR).as_posix() for path in (JOBS_DIR / "training").glob("*.py"))


def stage(bucket: str = BUCKET, prefix: str = CODE_PREFIX) -> dict[str, str]:
    """Write the code (tarball for training, unpacked files for processing) and input data into the store."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name in SCRIPTS:
            tar.add(JOBS_DIR / name, arcname=name)
    tarball = f"s3://{bucket}/{prefix}/sourcedir.tar.gz"
    store.put_bytes(tarball, raw.getvalue())
    for name in SCRIPTS:
        store.put_bytes(f"s3://{bucket}/{prefix}/source/{name}", (JOBS_DIR / name).read_bytes())
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
