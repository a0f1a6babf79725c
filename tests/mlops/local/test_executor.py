"""The local executor on the sample definition (tiny jobs): end to end, failures, cache, retries, concurrency."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mlops import store
from mlops.definition.model import DefinitionError
from mlops.local import commands, records
from tests.helpers import ROOT
from tests.helpers import sample_pipeline as sample


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "mlops"))
    monkeypatch.setenv("MLOPS_CPUS", "2")
    return tmp_path / "mlops"


@pytest.fixture()
def uris(home):
    return sample.stage()


def _run(definition, params=None, **kwargs):
    out = io.StringIO()
    execution_id = commands.run(definition, params or {}, pipeline_name="sample", stream=out, **kwargs)
    return execution_id, out.getvalue()


def _steps(execution_id):
    return {s.step_name: s for s in records.list_steps(execution_id)}


def _overlap(a, b):
    return a.start_time < b.end_time and b.start_time < a.end_time


def test_whole_sample_definition_runs_end_to_end(uris):
    execution_id, output = _run(sample.definition(uris))
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Succeeded", described
    steps = _steps(execution_id)
    assert set(steps) == {"Prep", "TrainA", "TrainB", "Tune", "Evaluate", "Check", "Register-RegisterModel"}
    assert all(s.status == "Succeeded" for s in steps.values())
    # the two trainings ran side by side, each with half of the 2-core budget
    assert _overlap(steps["TrainA"], steps["TrainB"])
    model = json.loads(_model_json(steps["TrainA"].properties["ModelArtifacts"]["S3ModelArtifacts"]))
    assert model["cpus"] == "1" and model["n"] == 20
    # tuning: 3 recorded trials, summaries best first, Evaluate read the best trial's model
    tune = steps["Tune"].properties
    trials = records.list_jobs(execution_id, "Tune")
    assert len([j for j in trials if j["job_type"] == "Training"]) == 3
    values = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in tune["TrainingJobSummaries"]]
    assert values == sorted(values, reverse=True)
    assert tune["BestTrainingJob"]["TrainingJobName"] == tune["TrainingJobSummaries"][0]["TrainingJobName"]
    model_a = steps["Evaluate"].properties["ProcessingInputs"][1]["S3Input"]["S3Uri"]
    assert tune["BestTrainingJob"]["TrainingJobName"] in model_a and store.exists(model_a)
    # condition read the property file; registration got resolved arguments
    assert steps["Check"].properties == {"Outcome": "True"}
    registered = steps["Register-RegisterModel"].properties
    assert registered["ModelPackageVersion"] == 1
    assert registered["ModelApprovalStatus"] == "PendingManualApproval"
    assert registered["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == \
        steps["TrainA"].properties["ModelArtifacts"]["S3ModelArtifacts"]
    # metrics from the log, report, summary with the next command
    final = {m["MetricName"]: m["Value"] for m in steps["TrainA"].properties["FinalMetricDataList"]}
    assert final["epoch"] == 2 and 0.5 < final["validation:accuracy"] < 1
    report = Path(described["ReportPath"])
    assert report.is_file() and "data:image/png;base64" in report.read_text()
    assert "mlops registry approve --version 1" in output


def _model_json(uri: str) -> str:
    import tarfile

    with tarfile.open(store.s3_uri_to_path(uri)) as tar:
        return tar.extractfile("model.json").read().decode()


def test_failing_step_fails_the_execution_and_runs_nothing_downstream(uris):
    execution_id, output = _run(sample.definition(uris), {"FailStep": "TrainB"})
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert "TrainB" in described["FailureReason"] and "TrainB was told to fail" in described["FailureReason"]
    steps = _steps(execution_id)
    assert steps["TrainB"].status == "Failed"
    assert not {"Evaluate", "Check", "Register-RegisterModel", "AccuracyTooLow"} & set(steps)
    # what already succeeded is intact in the store
    for output_config in steps["Prep"].properties["ProcessingOutputConfig"]["Outputs"]:
        assert store.exists(output_config["S3Output"]["S3Uri"])
    assert store.exists(steps["TrainA"].properties["ModelArtifacts"]["S3ModelArtifacts"])
    assert "mlops executions retry" in output


def test_fail_step_message_carries_the_figures(uris):
    execution_id, _ = _run(sample.definition(uris), {"Threshold": "0.999"})
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert described["FailureReason"].startswith("accuracy 0.") and "is below 0.999" in described["FailureReason"]
    steps = _steps(execution_id)
    assert steps["Check"].properties == {"Outcome": "False"}
    assert "Register-RegisterModel" not in steps and steps["AccuracyTooLow"].status == "Failed"


def test_cache_reuses_unchanged_steps_and_reruns_changed_ones(uris):
    definition = sample.definition(uris)
    first, _ = _run(definition)
    second, output = _run(definition)
    steps = _steps(second)
    for name in ("Prep", "TrainA", "TrainB", "Tune", "Evaluate"):
        assert steps[name].cache_source == first, name
    assert steps["TrainA"].properties == _steps(first)["TrainA"].properties
    cached_line = next(line for line in output.splitlines() if "from cache:" in line)
    assert set(cached_line.split(":", 1)[1].replace(",", " ").split()) == {"Prep", "TrainA", "TrainB", "Tune",
                                                                          "Evaluate"}
    # a changed argument (Epochs feeds both trainings) reruns them and what reads them; the rest stays cached
    third, _ = _run(definition, {"Epochs": "3"})
    steps = _steps(third)
    assert steps["Prep"].cache_source == first
    assert steps["Tune"].cache_source == first  # epochs is tuned there, not static
    for name in ("TrainA", "TrainB", "Evaluate"):
        assert steps[name].cache_source is None and steps[name].status == "Succeeded", name
    # outputs gone from the store: no false hit
    prep_outputs = _steps(first)["Prep"].properties["ProcessingOutputConfig"]["Outputs"]
    import shutil

    shutil.rmtree(store.s3_uri_to_path(prep_outputs[0]["S3Output"]["S3Uri"]))
    fourth, _ = _run(definition)
    assert _steps(fourth)["Prep"].cache_source is None


def test_no_cache_when_disabled(uris):
    definition = sample.definition(uris, cache=False)
    _run(definition)
    second, _ = _run(definition)
    assert all(s.cache_source is None for s in _steps(second).values())


@pytest.mark.parametrize(("params", "message"), [
    ({"Epoch": "3"}, "unknown parameter(s) Epoch"),
    ({"Epochs": "three"}, "Epochs is Integer"),
    ({"Epochs": "2.5"}, "Epochs is Integer"),
    ({"Threshold": "high"}, "Threshold is Float"),
    ({"ModelApprovalStatus": "Maybe"}, "is not one of"),
])
def test_bad_parameters_are_refused_before_anything_runs(uris, params, message):
    with pytest.raises(DefinitionError) as caught:
        _run(sample.definition(uris), params)
    assert message in str(caught.value)
    if "unknown" in message:
        assert "Epochs (Integer)" in str(caught.value)  # lists the valid names and types
    assert commands.list_executions() == []
    assert not store.executions_root().exists() or not any(store.executions_root().iterdir())


def test_a_store_fault_is_retried_per_the_retry_policy(uris, monkeypatch):
    """Step.SERVICE_FAULT: the store failed while staging a job's inputs (the job never ran), once."""
    from mlops.local import training

    calls = []
    real = training.store.download

    def flaky(uri, destination):
        calls.append(uri)
        if len(calls) == 1:
            raise OSError(5, "Input/output error", str(destination))
        return real(uri, destination)

    monkeypatch.setattr(training.store, "download", flaky)
    policies = [{"ExceptionType": ["Step.SERVICE_FAULT"], "IntervalSeconds": 0.1, "BackoffRate": 1.0,
                 "MaxAttempts": 2}]
    execution_id, _ = _run(sample.definition(uris, retry_policies=policies, cache=False))
    steps = _steps(execution_id)
    assert commands.describe_execution(execution_id)["PipelineExecutionStatus"] == "Succeeded"
    retried = [s for s in steps.values() if s.attempt_count == 2]
    assert len(retried) == 1, {n: s.attempt_count for n, s in steps.items()}
    first_attempt_log = Path(retried[0].work_dir).parent / "attempt-1" / "job.log"
    assert "(Step.SERVICE_FAULT)" in first_attempt_log.read_text() and "retrying in" in first_attempt_log.read_text()


def test_an_out_of_memory_kill_is_not_retried(uris, tmp_path):
    """SageMaker fails a job killed by the OOM killer (exit 137) and does not retry it, whatever the policy."""
    policies = [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR", "SageMaker.CAPACITY_ERROR",
                                   "SageMaker.RESOURCE_LIMIT"], "IntervalSeconds": 0.1, "MaxAttempts": 3}]
    execution_id, _ = _run(sample.definition(uris, retry_policies=policies, cache=False),
                           {"CrashOnce": str(tmp_path / "m")})
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert _steps(execution_id)["TrainA"].attempt_count == 1
    assert "ExecuteUserScriptError" in described["FailureReason"] and "ExitCode -9" in described["FailureReason"]


def test_algorithm_errors_are_not_retried(uris):
    policies = [{"ExceptionType": ["SageMaker.JOB_INTERNAL_ERROR"], "IntervalSeconds": 0.1, "BackoffRate": 1.0,
                 "MaxAttempts": 3}]
    execution_id, _ = _run(sample.definition(uris, retry_policies=policies, cache=False), {"FailStep": "Prep"})
    assert _steps(execution_id)["Prep"].attempt_count == 1


def _spawn_runner(home: Path, params: dict[str, str]) -> subprocess.Popen:
    code = ("import sys, json; from mlops.local import commands; from tests.helpers import sample_pipeline as sample; "
            "d = sample.definition(sample.stage()); "
            "commands.run(d, json.loads(sys.argv[1]), pipeline_name='sample')")
    env = {**os.environ, "MLOPS_HOME": str(home), "MLOPS_CPUS": "2"}
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(params)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out waiting")


def _job_processes(home: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if (process.info["cwd"] or "").startswith(str(home)) and "training/train.py" in \
                    " ".join(process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_sigkill_mid_training_leaves_a_consistent_database_and_retry_completes(home):
    runner = _spawn_runner(home, {"Sleep": "1.0", "Epochs": "3"})
    try:
        def training_running():
            executions = records.list_executions() if store.db_path().exists() else []
            if not executions:
                return None
            steps = _steps(executions[0].execution_id)
            train = steps.get("TrainA")
            if train and train.status == "Executing" and train.log_path and Path(train.log_path).is_file() \
                    and "epoch=1" in Path(train.log_path).read_text():
                return executions[0].execution_id
            return None

        execution_id = _wait_for(training_running)
        assert _job_processes(home)
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    finally:
        if runner.poll() is None:
            runner.kill()
    # the job processes died with their runner (no orphan writing into the step folders)
    _wait_for(lambda: not _job_processes(home), timeout=10)
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert "retry" in described["FailureReason"]
    steps = _steps(execution_id)
    assert steps["Prep"].status == "Succeeded"
    assert steps["TrainA"].status == "Failed" and "interrupted" in steps["TrainA"].failure_reason
    assert all(s.status != "Executing" for s in steps.values())
    prep_properties = steps["Prep"].properties

    status = commands.retry(execution_id, stream=io.StringIO())
    assert status == "Succeeded"
    steps = _steps(execution_id)
    assert all(s.status == "Succeeded" for s in steps.values())
    assert steps["Prep"].attempt_count == 1 and steps["Prep"].properties == prep_properties  # reused
    assert steps["TrainA"].attempt_count == 2
    assert commands.describe_execution(execution_id)["PipelineExecutionStatus"] == "Succeeded"
    with pytest.raises(RuntimeError, match="already succeeded"):
        commands.retry(execution_id)


def test_two_concurrent_executions_keep_their_artifacts_apart(uris):
    definition = sample.definition(uris, cache=False)
    first = commands.run(definition, {"Sleep": "0.3"}, pipeline_name="sample", wait=False)
    second = commands.run(definition, {"Sleep": "0.3", "Epochs": "3"}, pipeline_name="sample", wait=False)

    def both_done():
        statuses = [commands.describe_execution(e)["PipelineExecutionStatus"] for e in (first, second)]
        return statuses if all(s != "Executing" for s in statuses) else None

    assert _wait_for(both_done, timeout=120) == ["Succeeded", "Succeeded"]
    a, b = _steps(first), _steps(second)
    # they really ran at the same time
    assert _overlap(a["TrainA"], b["TrainA"]) or _overlap(a["Prep"], b["Prep"])
    uris_a = {o["S3Output"]["S3Uri"] for o in a["Prep"].properties["ProcessingOutputConfig"]["Outputs"]}
    uris_b = {o["S3Output"]["S3Uri"] for o in b["Prep"].properties["ProcessingOutputConfig"]["Outputs"]}
    assert not uris_a & uris_b
    assert a["TrainA"].properties["ModelArtifacts"] != b["TrainA"].properties["ModelArtifacts"]
    assert a["TrainA"].work_dir != b["TrainA"].work_dir
    assert json.loads(_model_json(b["TrainA"].properties["ModelArtifacts"]["S3ModelArtifacts"]))["accuracy"] > \
        json.loads(_model_json(a["TrainA"].properties["ModelArtifacts"]["S3ModelArtifacts"]))["accuracy"]
    versions = {a["Register-RegisterModel"].properties["ModelPackageVersion"],
                b["Register-RegisterModel"].properties["ModelPackageVersion"]}
    assert versions == {1, 2}


@pytest.mark.slow
def test_sigterm_stops_the_execution_and_its_jobs(home):
    runner = _spawn_runner(home, {"Sleep": "1.0", "Epochs": "5"})
    try:
        def training_started():
            executions = records.list_executions() if store.db_path().exists() else []
            if executions and _job_processes(home):
                return executions[0].execution_id
            return None

        execution_id = _wait_for(training_started)
        runner.send_signal(signal.SIGTERM)
        runner.wait(30)
    finally:
        if runner.poll() is None:
            runner.kill()
    _wait_for(lambda: not _job_processes(home), timeout=15)
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Stopped"
    steps = _steps(execution_id)
    assert {s.status for s in steps.values()} <= {"Succeeded", "Stopped"}
    assert any(s.status == "Stopped" for s in steps.values())
    assert commands.retry(execution_id, stream=io.StringIO()) == "Succeeded"


def test_tuning_fails_when_no_trial_produces_the_objective(uris):
    execution_id, _ = _run(sample.definition(uris), {"FailStep": "Tune"})
    described = commands.describe_execution(execution_id)
    assert described["PipelineExecutionStatus"] == "Failed"
    assert "no training job of tuning job" in described["FailureReason"]
    trials = [j for j in records.list_jobs(execution_id, "Tune") if j["job_type"] == "Training"]
    assert len(trials) == 3 and all(j["status"] == "Failed" for j in trials)
    assert all("Tune was told to fail" in j["failure_reason"] for j in trials)
