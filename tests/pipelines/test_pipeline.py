"""The pipeline definition: built offline and fast, wired to the job scripts as docs/jobs.md says."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import replace

import pytest

from mlops.definition.build import build_definition
from mlops.definition.config import LOCAL_BUCKET, LOCAL_ROLE_ARN, PipelineConfig
from mlops.definition.model import iter_steps
from mlops.definition.validate import errors_only, validate_definition
from pipelines.source_bundle import code_location, collect_bundle
from training.metrics import CNN_METRIC_DEFINITIONS, OBJECTIVE_METRIC, XGBOOST_METRIC_DEFINITIONS

CONFIG = PipelineConfig(region="us-east-1", role=LOCAL_ROLE_ARN, bucket=LOCAL_BUCKET,
                        pipeline_name="image-classification", model_package_group="image-classification")


@pytest.fixture(scope="module")
def definition() -> dict:
    import pipelines.image_classification.pipeline  # noqa: F401  (imports are not part of the build time)

    return build_definition(CONFIG)


def steps_by_name(definition: dict) -> dict[str, dict]:
    return {step["Name"]: step for step, _, _ in iter_steps(definition["Steps"])}


def test_steps_and_types(definition):
    steps = steps_by_name(definition)
    assert {name: step["Type"] for name, step in steps.items()} == {
        "Preprocess": "Processing", "TrainCNN": "Training", "TrainXGBoost": "Training", "TuneCNN": "Tuning",
        "EvaluateBaseline": "Processing", "Evaluate": "Processing", "CheckAccuracy": "Condition",
        "Register-RegisterModel": "RegisterModel",
        "FailAccuracy": "Fail",
    }
    condition = steps["CheckAccuracy"]["Arguments"]
    assert [s["Name"] for s in condition["IfSteps"]] == ["Register-RegisterModel"]
    assert [s["Name"] for s in condition["ElseSteps"]] == ["FailAccuracy"]


def test_build_is_offline_and_fast(monkeypatch):
    import pipelines.image_classification.pipeline  # noqa: F401

    def refuse(*args, **kwargs):
        raise AssertionError(f"network call while building the definition: {args[1:]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    started = time.process_time()  # CPU time: other work on the machine must not fail the test
    built = build_definition(CONFIG)
    elapsed = time.process_time() - started
    assert built["Steps"]
    assert elapsed < 2.0, f"building the definition took {elapsed:.2f} s of CPU (budget 2 s after imports)"


def test_definition_is_stable_between_builds(definition):
    again = build_definition(CONFIG)
    assert json.dumps(again, sort_keys=True) == json.dumps(definition, sort_keys=True)
    assert "sagemaker_job_name" not in json.dumps(definition)


def test_processing_steps_run_job_scripts_from_the_bundle(definition):
    steps = steps_by_name(definition)
    bundle = collect_bundle()
    source_uri = code_location(LOCAL_BUCKET, "image-classification", bundle).source_uri
    for name, script in (("Preprocess", "preprocess.py"), ("EvaluateBaseline", "evaluate.py"), ("Evaluate", "evaluate.py")):
        arguments = steps[name]["Arguments"]
        assert arguments["AppSpecification"]["ContainerEntrypoint"] == [
            "python3", f"/opt/ml/processing/input/code/training/{script}"]
        code = next(i for i in arguments["ProcessingInputs"] if i["InputName"] == "code")
        assert code["S3Input"]["S3Uri"] == source_uri
        assert code["S3Input"]["LocalPath"] == "/opt/ml/processing/input/code"

    preprocess = steps["Preprocess"]["Arguments"]
    args = preprocess["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--input-dir") + 1] == "/opt/ml/processing/input/raw"
    assert args[args.index("--output-dir") + 1] == "/opt/ml/processing/output"
    outputs = {o["OutputName"]: o["S3Output"]["LocalPath"] for o in preprocess["ProcessingOutputConfig"]["Outputs"]}
    assert outputs == {split: f"/opt/ml/processing/output/{split}" for split in ("train", "validation", "test")}

    baseline = steps["EvaluateBaseline"]["Arguments"]
    assert "sagemaker-xgboost:1.7-1" in baseline["AppSpecification"]["ImageUri"]  # has xgboost: no run-time install
    args = baseline["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--model-dir") + 1] == "/opt/ml/processing/model"
    inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in baseline["ProcessingInputs"]}
    assert inputs["/opt/ml/processing/model"] == {"Get": "Steps.TrainXGBoost.ModelArtifacts.S3ModelArtifacts"}

    evaluate = steps["Evaluate"]
    assert "pytorch-training" in evaluate["Arguments"]["AppSpecification"]["ImageUri"]
    args = evaluate["Arguments"]["AppSpecification"]["ContainerArguments"]
    expected = {"--model-dir": "/opt/ml/processing/model/cnn", "--baseline-dir": "/opt/ml/processing/baseline",
                "--test-dir": "/opt/ml/processing/test", "--output-dir": "/opt/ml/processing/evaluation"}
    assert {k: args[args.index(k) + 1] for k in expected} == expected
    inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in evaluate["Arguments"]["ProcessingInputs"]}
    assert inputs["/opt/ml/processing/model/cnn"] == {"Get": "Steps.TrainCNN.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["/opt/ml/processing/baseline"] == {
        "Get": "Steps.EvaluateBaseline.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"}
    assert inputs["/opt/ml/processing/test"] == {
        "Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"}
    assert evaluate["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}]
    outputs = evaluate["Arguments"]["ProcessingOutputConfig"]["Outputs"]
    assert [(o["OutputName"], o["S3Output"]["LocalPath"]) for o in outputs] == [
        ("evaluation", "/opt/ml/processing/evaluation")]


def test_training_steps_use_script_mode_from_the_tarball(definition):
    steps = steps_by_name(definition)
    tarball = code_location(LOCAL_BUCKET, "image-classification", collect_bundle()).tarball_uri
    for name, program, metrics, channels in (
            ("TrainCNN", "training/train_cnn.py", CNN_METRIC_DEFINITIONS, ["train", "validation", "weights"]),
            ("TrainXGBoost", "training.train_xgboost", XGBOOST_METRIC_DEFINITIONS, ["train", "validation"])):
        arguments = steps[name]["Arguments"]
        hyperparameters = arguments["HyperParameters"]
        assert json.loads(hyperparameters["sagemaker_program"]) == program  # XGBoost: a module (python -m)
        assert json.loads(hyperparameters["sagemaker_submit_directory"]) == tarball
        assert arguments["AlgorithmSpecification"]["MetricDefinitions"] == metrics
        assert [c["ChannelName"] for c in arguments["InputDataConfig"]] == channels
    weights = steps["TrainCNN"]["Arguments"]["InputDataConfig"][2]["DataSource"]["S3DataSource"]
    assert weights["S3Uri"] == {"Get": "Parameters.PretrainedWeightsUrl"}  # pretrained weights for resnet18
    trial = steps["TuneCNN"]["Arguments"]["TrainingJobDefinition"]["InputDataConfig"]
    assert [c["ChannelName"] for c in trial] == ["train", "validation"]  # the trials never get weights
    cnn = steps["TrainCNN"]["Arguments"]["HyperParameters"]
    assert set(cnn) >= {"epochs", "batch-size", "lr", "architecture"}
    # The final training takes the tuner's best lr/batch size (pipeline.TUNED_FINAL_HYPERPARAMETERS)
    assert cnn["lr"] == {"Std:Join": {"On": "", "Values": [
        {"Get": "Steps.TuneCNN.BestTrainingJob.TunedHyperParameters['lr']"}]}}
    assert cnn["architecture"] == {"Get": "Parameters.CnnArchitecture"}
    assert cnn["epochs"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.CnnEpochs"}]}}
    assert "num-round" in steps["TrainXGBoost"]["Arguments"]["HyperParameters"]


def test_tuning_step(definition):
    tuning = steps_by_name(definition)["TuneCNN"]["Arguments"]
    config = tuning["HyperParameterTuningJobConfig"]
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": OBJECTIVE_METRIC}
    assert config["Strategy"] == {"Get": "Parameters.TuningStrategy"}
    assert config["TrainingJobEarlyStoppingType"] == {"Get": "Parameters.TuningEarlyStoppingType"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": {"Get": "Parameters.TuningMaxJobs"},
                                        "MaxParallelTrainingJobs": {"Get": "Parameters.TuningMaxParallelJobs"}}
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"][0]["Name"] == "lr"
    assert ranges["ContinuousParameterRanges"][0]["ScalingType"] == "Logarithmic"
    assert {r["Name"] for r in ranges["CategoricalParameterRanges"]} == {"batch-size", "architecture"}
    assert [r["Name"] for r in ranges["IntegerParameterRanges"]] == ["epochs"]
    definition_job = tuning["TrainingJobDefinition"]
    assert definition_job["AlgorithmSpecification"]["MetricDefinitions"] == CNN_METRIC_DEFINITIONS
    assert json.loads(definition_job["StaticHyperParameters"]["sagemaker_program"]) == "training/train_cnn.py"


def test_condition_register_and_fail(definition):
    steps = steps_by_name(definition)
    conditions = steps["CheckAccuracy"]["Arguments"]["Conditions"]
    assert [c["Type"] for c in conditions] == ["GreaterThanOrEqualTo", "GreaterThanOrEqualTo"]
    assert conditions[0]["LeftValue"]["Std:JsonGet"]["Path"] == "multiclass_classification_metrics.accuracy.value"
    assert conditions[0]["RightValue"] == {"Get": "Parameters.AccuracyThreshold"}
    assert conditions[1]["RightValue"]["Std:JsonGet"]["Path"] == \
        "baseline.multiclass_classification_metrics.accuracy.value"

    register = steps["Register-RegisterModel"]["Arguments"]
    assert register["ModelPackageGroupName"] == "image-classification"
    assert register["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    spec = register["InferenceSpecification"]
    assert spec["SupportedContentTypes"] == ["application/json", "application/x-npy", "image/png", "image/jpeg"]
    assert spec["SupportedResponseMIMETypes"] == ["application/json"]
    container = spec["Containers"][0]
    assert "pytorch-inference" in container["Image"]
    assert container["ModelDataUrl"] == {"Get": "Steps.TrainCNN.ModelArtifacts.S3ModelArtifacts"}
    statistics = register["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["ContentType"] == "application/json"
    assert statistics["S3Uri"]["Std:Join"]["Values"] == [
        {"Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"}, "evaluation.json"]
    # no repack step: the model is registered as trained
    assert not any("Repack" in name for name in steps)

    message = json.dumps(steps["FailAccuracy"]["Arguments"]["ErrorMessage"])
    assert "Parameters.AccuracyThreshold" in message and "baseline.multiclass_classification_metrics" in message


def test_parameters_and_defaults(definition):
    parameters = {p["Name"]: p for p in definition["Parameters"]}
    defaults = {name: p.get("DefaultValue") for name, p in parameters.items()}
    assert defaults["ModelApprovalStatus"] == "PendingManualApproval"
    assert defaults["CnnEpochs"] == 15 and defaults["XGBoostNumRound"] == 300
    # lr and batch size come from TuneCNN's best trial, so they are not parameters
    assert not {"CnnBatchSize", "CnnLearningRate"} & set(defaults)
    assert defaults["CnnArchitecture"] == "compact"
    assert defaults["AccuracyThreshold"] == 0.99
    assert defaults["TuningMaxJobs"] == 4 and defaults["TuningMaxParallelJobs"] == 2
    assert defaults["TrainingInstanceType"] == "ml.m5.xlarge" and defaults["ProcessingInstanceType"] == "ml.m5.large"
    assert defaults["InputDataUrl"] == f"s3://{LOCAL_BUCKET}/data/mnist/"
    assert defaults["PretrainedWeightsUrl"] == f"s3://{LOCAL_BUCKET}/pretrained/none/"
    assert "resnet18" in parameters["CnnArchitecture"]["EnumValues"]
    for name in ("ProcessingInstanceCount", "TrainingInstanceCount"):
        assert parameters[name]["Type"] == "Integer"


def test_cache_and_retry_settable_by_caller():
    from sagemaker.workflow.steps import CacheConfig

    custom = replace(CONFIG, extra={"cache_config": CacheConfig(enable_caching=False), "retry_policies": []})
    built = build_definition(custom)
    jobs = [s for s, _, _ in iter_steps(built["Steps"]) if s["Type"] in ("Processing", "Training", "Tuning")]
    assert len(jobs) == 6
    for step in jobs:
        assert step.get("CacheConfig", {"Enabled": False})["Enabled"] is False
        assert not step.get("RetryPolicies")


def test_default_cache_and_retry(definition):
    jobs = [s for s, _, _ in iter_steps(definition["Steps"]) if s["Type"] in ("Processing", "Training", "Tuning")]
    for step in jobs:
        assert step["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}
        kinds = {kind for policy in step["RetryPolicies"] for kind in policy["ExceptionType"]}
        assert {"Step.THROTTLING", "SageMaker.CAPACITY_ERROR"} <= kinds


def test_registered_model_can_come_from_the_tuner():
    built = build_definition(replace(CONFIG, extra={"registered_model_source": "TuneCNN"}))
    steps = steps_by_name(built)
    model_url = json.dumps(steps["Register-RegisterModel"]["Arguments"]["InferenceSpecification"])
    assert "Steps.TuneCNN.TrainingJobSummaries[0].TrainingJobName" in model_url
    assert errors_only(validate_definition(built)) == []
    with pytest.raises(ValueError, match="registered_model_source='Nonsense'"):
        build_definition(replace(CONFIG, extra={"registered_model_source": "Nonsense"}))












def test_every_script_the_definition_runs_is_in_the_bundle(definition):
    names = {name for name, _ in collect_bundle().files}
    scripts = set()
    for step, _, _ in iter_steps(definition["Steps"]):
        arguments = step["Arguments"]
        entrypoint = arguments.get("AppSpecification", {}).get("ContainerEntrypoint")
        if entrypoint:
            scripts.add(entrypoint[-1].removeprefix("/opt/ml/processing/input/code/"))
        for holder in (arguments.get("HyperParameters"), arguments.get("TrainingJobDefinition", {}).get(
                "StaticHyperParameters")):
            if holder and "sagemaker_program" in holder:
                program = json.loads(holder["sagemaker_program"])
                scripts.add(program if program.endswith(".py") else program.replace(".", "/") + ".py")
    assert scripts == {"training/preprocess.py", "training/train_cnn.py", "training/train_xgboost.py",
                       "training/evaluate.py"}
    assert scripts <= names, f"scripts missing from the bundle: {scripts - names}"
