"""The pipeline definition: built offline and fast, wired to the job scripts as docs/jobs.md says."""

from __future__ import annotations

import copy
import io
import json
import socket
import tarfile
import time
from pathlib import Path

import pytest

from mlops import staging
from mlops.definition.build import (
    LOCAL_BUCKET,
    LOCAL_ROLE_ARN,
    PipelineConfig,
    build_definition,
    check_parameter_overrides,
    iter_steps,
    normalise,
    parse_parameter_options,
    stabilise,
)
from training.metrics import CNN_METRIC_DEFINITIONS, OBJECTIVE_METRIC, XGBOOST_METRIC_DEFINITIONS

CONFIG = PipelineConfig(region="us-east-1", role=LOCAL_ROLE_ARN, bucket=LOCAL_BUCKET,
                        pipeline_name="image-classification", model_package_group="image-classification")


@pytest.fixture(scope="module")
def definition() -> dict:
    import pipelines.image_classification.pipeline  # noqa: F401  (imports are not part of the build time)

    return build_definition(CONFIG)


def steps_by_name(definition: dict) -> dict[str, dict]:
    return {step["Name"]: step for step in iter_steps(definition["Steps"])}


def test_steps_and_types(definition):
    steps = steps_by_name(definition)
    assert {name: step["Type"] for name, step in steps.items()} == {
        "Preprocess": "Processing", "TrainCNN": "Training", "TrainXGBoost": "Training", "TuneCNN": "Tuning",
        "Evaluate": "Processing", "CheckAccuracy": "Condition", "Register-RegisterModel": "RegisterModel",
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
    started = time.perf_counter()
    built = build_definition(CONFIG)
    elapsed = time.perf_counter() - started
    assert built["Steps"]
    assert elapsed < 2.0, f"building the definition took {elapsed:.2f} s (budget 2 s after imports)"


def test_definition_is_stable_between_builds(definition):
    again = build_definition(CONFIG)
    assert json.dumps(again, sort_keys=True) == json.dumps(definition, sort_keys=True)
    assert "sagemaker_job_name" not in json.dumps(definition)


def test_processing_steps_run_job_scripts_from_the_bundle(definition):
    steps = steps_by_name(definition)
    bundle = staging.collect_bundle()
    source_uri = staging.code_location(LOCAL_BUCKET, "image-classification", bundle).source_uri
    for name, script in (("Preprocess", "preprocess.py"), ("Evaluate", "evaluate.py")):
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

    evaluate = steps["Evaluate"]
    args = evaluate["Arguments"]["AppSpecification"]["ContainerArguments"]
    expected = {"--cnn-model-dir": "/opt/ml/processing/model/cnn", "--xgboost-model-dir":
                "/opt/ml/processing/model/xgboost", "--test-dir": "/opt/ml/processing/test",
                "--output-dir": "/opt/ml/processing/evaluation"}
    assert {k: args[args.index(k) + 1] for k in expected} == expected
    inputs = {i["S3Input"]["LocalPath"]: i["S3Input"]["S3Uri"] for i in evaluate["Arguments"]["ProcessingInputs"]}
    assert inputs["/opt/ml/processing/model/cnn"] == {"Get": "Steps.TrainCNN.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["/opt/ml/processing/model/xgboost"] == {
        "Get": "Steps.TrainXGBoost.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["/opt/ml/processing/test"] == {
        "Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"}
    assert evaluate["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}]
    outputs = evaluate["Arguments"]["ProcessingOutputConfig"]["Outputs"]
    assert [(o["OutputName"], o["S3Output"]["LocalPath"]) for o in outputs] == [
        ("evaluation", "/opt/ml/processing/evaluation")]


def test_training_steps_use_script_mode_from_the_tarball(definition):
    steps = steps_by_name(definition)
    tarball = staging.code_location(LOCAL_BUCKET, "image-classification", staging.collect_bundle()).tarball_uri
    for name, script, metrics in (("TrainCNN", "train_cnn.py", CNN_METRIC_DEFINITIONS),
                                  ("TrainXGBoost", "train_xgboost.py", XGBOOST_METRIC_DEFINITIONS)):
        arguments = steps[name]["Arguments"]
        hyperparameters = arguments["HyperParameters"]
        assert json.loads(hyperparameters["sagemaker_program"]) == f"training/{script}"
        assert json.loads(hyperparameters["sagemaker_submit_directory"]) == tarball
        assert arguments["AlgorithmSpecification"]["MetricDefinitions"] == metrics
        assert [c["ChannelName"] for c in arguments["InputDataConfig"]] == ["train", "validation"]
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
    # lr and batch size come from TuneCNN's best trial, so they are not parameters by default
    assert not {"CnnBatchSize", "CnnLearningRate"} & set(defaults)
    assert defaults["CnnArchitecture"] == "compact"
    assert defaults["AccuracyThreshold"] == 0.99
    assert defaults["TuningMaxJobs"] == 4 and defaults["TuningMaxParallelJobs"] == 2
    assert defaults["TrainingInstanceType"] == "ml.m5.xlarge" and defaults["ProcessingInstanceType"] == "ml.m5.large"
    assert defaults["InputDataUrl"] == f"s3://{LOCAL_BUCKET}/data/mnist/"
    for name in ("ProcessingInstanceCount", "TrainingInstanceCount"):
        assert parameters[name]["Type"] == "Integer"


def test_cache_and_retry_settable_by_caller():
    from sagemaker.workflow.steps import CacheConfig

    custom = PipelineConfig(**{**vars(CONFIG), "extra": {"cache_config": CacheConfig(enable_caching=False),
                                                          "retry_policies": []}})
    built = build_definition(custom)
    jobs = [s for s in iter_steps(built["Steps"]) if s["Type"] in ("Processing", "Training", "Tuning")]
    assert len(jobs) == 5
    for step in jobs:
        assert step.get("CacheConfig", {"Enabled": False})["Enabled"] is False
        assert not step.get("RetryPolicies")


def test_default_cache_and_retry(definition):
    jobs = [s for s in iter_steps(definition["Steps"]) if s["Type"] in ("Processing", "Training", "Tuning")]
    for step in jobs:
        assert step["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}
        kinds = {kind for policy in step["RetryPolicies"] for kind in policy["ExceptionType"]}
        assert {"Step.THROTTLING", "SageMaker.CAPACITY_ERROR"} <= kinds


def test_registered_model_can_come_from_the_tuner(monkeypatch):
    from pipelines.image_classification import pipeline as module
    from mlops.definition.validate import errors_only, validate_definition

    monkeypatch.setattr(module, "REGISTERED_MODEL_SOURCE", "TuneCNN")
    built = build_definition(CONFIG)
    steps = steps_by_name(built)
    model_url = json.dumps(steps["Register-RegisterModel"]["Arguments"]["InferenceSpecification"])
    assert "Steps.TuneCNN.TrainingJobSummaries[0].TrainingJobName" in model_url
    assert errors_only(validate_definition(built)) == []

    monkeypatch.setattr(module, "REGISTERED_MODEL_SOURCE", "Nonsense")
    with pytest.raises(ValueError, match="REGISTERED_MODEL_SOURCE"):
        build_definition(CONFIG)


def test_stabilise_and_normalise():
    raw = {"Steps": [{"Name": "T", "Type": "Tuning", "Arguments": {"TrainingJobDefinition": {
        "StaticHyperParameters": {"sagemaker_job_name": '"x-2026-01-02-03-04-05-678"', "a": "1"}}}},
        {"Name": "C", "Type": "Condition", "Arguments": {"IfSteps": [{"Name": "X", "Type": "Training", "Arguments": {
            "HyperParameters": {"sagemaker_job_name": "j", "sagemaker_submit_directory":
                                '"s3://b/p/code/' + "a" * 64 + '/sourcedir.tar.gz"'},
            "Name": "name-2026-01-02-03-04-05-678"}}]}}]}
    before = copy.deepcopy(raw)
    stable = stabilise(raw)
    assert raw == before, "stabilise must not modify its input"
    assert stable["Steps"][0]["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"] == {"a": "1"}
    nested = normalise(raw)["Steps"][1]["Arguments"]["IfSteps"][0]["Arguments"]
    assert nested["HyperParameters"] == {"sagemaker_submit_directory": '"s3://b/p/code/<code-hash>/sourcedir.tar.gz"'}
    assert nested["Name"] == "name-<timestamp>"


def test_parameter_overrides(definition):
    assert parse_parameter_options(["CnnEpochs=2", "InputDataUrl=s3://b/k=v"]) == {
        "CnnEpochs": "2", "InputDataUrl": "s3://b/k=v"}
    with pytest.raises(ValueError, match="expected Name=Value"):
        parse_parameter_options(["CnnEpochs"])
    assert check_parameter_overrides(definition, {"CnnEpochs": "2", "AccuracyThreshold": "0.5"})
    for bad, message in (({"Nope": "1"}, "not a parameter"), ({"CnnEpochs": "two"}, "expected a Integer"),
                         ({"AccuracyThreshold": "high"}, "expected a Float"),
                         ({"ModelApprovalStatus": "Maybe"}, "expected one of")):
        with pytest.raises(ValueError, match=message):
            check_parameter_overrides(definition, bad)


def test_config_from_env():
    config = PipelineConfig.from_env({"MLOPS_REGION": "eu-west-1", "MLOPS_BUCKET": "bkt"}, pipeline_name="p")
    assert (config.region, config.bucket, config.pipeline_name, config.role) == ("eu-west-1", "bkt", "p", None)
    assert config.for_local().role == LOCAL_ROLE_ARN
    with pytest.raises(ValueError, match="MLOPS_ROLE_ARN"):
        config.require_aws()


# ------------------------------------------------------------------ staging


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_bundle_is_deterministic_and_content_hashed(tmp_path):
    _write_package(tmp_path, {"training/__init__.py": "", "training/a.py": "A = 1\n", "training/sub/b.py": "B\n",
                              "training/__pycache__/a.cpython-311.pyc": "junk", "training/notes.txt": "no",
                              "inference/__init__.py": "", "inference/requirements.txt": "x\n"})
    first = staging.collect_bundle(tmp_path)
    assert [name for name, _ in first.files] == ["inference/__init__.py", "inference/requirements.txt",
                                                 "training/__init__.py", "training/a.py", "training/sub/b.py"]
    assert staging.collect_bundle(tmp_path, ("training",)).digest != first.digest
    assert first.tarball() == staging.collect_bundle(tmp_path).tarball()

    (tmp_path / "training/a.py").touch()  # a new mtime changes neither hash nor bytes
    assert staging.collect_bundle(tmp_path).tarball() == first.tarball()
    (tmp_path / "training/a.py").write_text("A = 2\n")
    assert staging.collect_bundle(tmp_path).digest != first.digest

    with tarfile.open(fileobj=io.BytesIO(first.tarball()), mode="r:gz") as tar:
        members = tar.getmembers()
        assert {m.name for m in members if m.isfile()} == {name for name, _ in first.files}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        tar.extractall(tmp_path / "out", filter="data")
    assert (tmp_path / "out/training/sub/b.py").read_text() == "B\n"


def test_bundle_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="training"):
        staging.collect_bundle(tmp_path)
    (tmp_path / "training").mkdir()
    (tmp_path / "training/requirements.txt").write_text("numpy\n")
    with pytest.raises(FileNotFoundError, match="no .py files"):
        staging.collect_bundle(tmp_path, ("training",))


def test_project_bundle_carries_job_scripts_and_inference_handlers():
    names = {name for name, _ in staging.collect_bundle().files}
    for needed in ("training/preprocess.py", "training/metrics.py", "inference/inference.py",
                   "inference/packaging.py", "inference/requirements.txt"):
        assert needed in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_stage_local_writes_both_layouts(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    from mlops.store import s3_uri_to_path

    _write_package(tmp_path, {"training/__init__.py": "", "training/job.py": "print('hi')\n"})
    bundle = staging.collect_bundle(tmp_path, ("training",))
    staged = staging.code_location("bkt", "pipe", bundle)
    assert staged.tarball_uri == f"s3://bkt/pipe/code/{bundle.digest}/sourcedir.tar.gz"
    written = staging.stage_local(bundle, staged)
    assert len(written) == 3  # two source files and the tarball
    assert s3_uri_to_path(staged.tarball_uri).read_bytes() == bundle.tarball()
    assert (s3_uri_to_path(staged.source_uri) / "training/job.py").read_text() == "print('hi')\n"
    assert staging.stage_local(bundle, staged) == []  # already staged: nothing rewritten
    assert not list((tmp_path / "home").rglob("*.tmp"))


def test_stage_dataset_local(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    from mlops.store import s3_uri_to_path

    written = staging.stage_dataset_local(staging.DATASET_DIR, "s3://mlops-local/data/mnist/")
    assert {p.name for p in written} == set(staging.DATASET_FILES)
    target = s3_uri_to_path("s3://mlops-local/data/mnist/SHA256SUMS")
    assert target.read_bytes() == (staging.DATASET_DIR / "SHA256SUMS").read_bytes()
    assert staging.stage_dataset_local(staging.DATASET_DIR, "s3://mlops-local/data/mnist/") == []
    with pytest.raises(FileNotFoundError, match="dataset files missing"):
        staging.dataset_files(tmp_path)


def test_every_script_the_definition_runs_is_in_the_bundle(definition):
    names = {name for name, _ in staging.collect_bundle().files}
    scripts = set()
    for step in iter_steps(definition["Steps"]):
        arguments = step["Arguments"]
        entrypoint = arguments.get("AppSpecification", {}).get("ContainerEntrypoint")
        if entrypoint:
            scripts.add(entrypoint[-1].removeprefix("/opt/ml/processing/input/code/"))
        for holder in (arguments.get("HyperParameters"), arguments.get("TrainingJobDefinition", {}).get(
                "StaticHyperParameters")):
            if holder and "sagemaker_program" in holder:
                scripts.add(json.loads(holder["sagemaker_program"]))
    assert scripts == {"training/preprocess.py", "training/train_cnn.py", "training/train_xgboost.py",
                       "training/evaluate.py"}
    assert scripts <= names, f"scripts missing from the bundle: {scripts - names}"
