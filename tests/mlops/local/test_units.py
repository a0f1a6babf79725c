"""Pieces of the local executor on their own: expressions, graph, parameters, processes, CPU budget, tuning."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import tarfile
import time

import pytest

from mlops.definition.model import DefinitionError
from mlops.local import expressions as ex
from mlops.local.engine import load, parse_duration, retry_delay
from mlops.local.jobs import CAPACITY_ERROR, JobFailed, extract_tar, run_process
from mlops.local.processing import PathMap
from mlops.local.runtime import job_name
from mlops.local.search import BayesianSearch, GridSearch, MedianStopping, RandomSearch, Range, parse_ranges
from mlops.local.training import MetricStream, host_names, write_container_config

PROCESSING = {"ProcessingOutputConfig": {"Outputs": [
    {"OutputName": "train", "S3Output": {"S3Uri": "s3://b/train", "LocalPath": "/opt/ml/processing/train"}},
    {"OutputName": "test", "S3Output": {"S3Uri": "s3://b/test", "LocalPath": "/opt/ml/processing/test"}}]}}
TUNING = {"TrainingJobSummaries": [{"TrainingJobName": "best"}, {"TrainingJobName": "second"}]}


def context(**properties):
    files = {("Evaluate", "Report"): {"metrics": {"accuracy": {"value": 0.97}}, "list": [{"x": 1}, {"x": 2}]}}

    def step_properties(name):
        if name not in properties:
            raise ex.ExpressionError(f"step {name} has no properties yet")
        return properties[name]

    return ex.Context(parameters={"Epochs": 3, "Threshold": 0.9, "Flag": True, "Name": "cnn"},
                      execution={"PipelineExecutionId": "abc123"}, step_properties=step_properties,
                      property_file=lambda step, name: files[(step, name)])


def test_property_paths_pick_list_items_by_name_and_index():
    ctx = context(Prep=PROCESSING, Tune=TUNING)
    get = {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['test'].S3Output.S3Uri"}
    assert ex.resolve(get, ctx) == "s3://b/test"
    assert ex.resolve({"Get": "Steps.Tune.TrainingJobSummaries[1].TrainingJobName"}, ctx) == "second"
    with pytest.raises(ex.ExpressionError, match="no item named 'validation'"):
        ex.resolve({"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['validation'].S3Output.S3Uri"}, ctx)
    with pytest.raises(ex.ExpressionError, match="out of range"):
        ex.resolve({"Get": "Steps.Tune.TrainingJobSummaries[5].TrainingJobName"}, ctx)
    with pytest.raises(ex.ExpressionError, match="no properties yet"):
        ex.resolve({"Get": "Steps.Other.X"}, ctx)


def test_join_jsonget_parameters_and_execution_variables():
    ctx = context()
    join = {"Std:Join": {"On": "/", "Values": ["s3:/", "b", {"Get": "Execution.PipelineExecutionId"},
                                               {"Get": "Parameters.Epochs"}, {"Get": "Parameters.Flag"}]}}
    assert ex.resolve(join, ctx) == "s3://b/abc123/3/true"
    json_get = {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.Report"},
                                "Path": "metrics.accuracy.value"}}
    assert ex.resolve(json_get, ctx) == 0.97
    assert ex.resolve({"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.Report"},
                                       "Path": "list[1].x"}}, ctx) == 2
    with pytest.raises(ex.ExpressionError, match="declared: "):
        ex.resolve({"Get": "Parameters.Nope"}, ctx)
    # nested structures are walked, literals untouched
    assert ex.resolve({"A": [{"Get": "Parameters.Name"}, 1, None]}, ctx) == {"A": ["cnn", 1, None]}


def test_conditions():
    ctx = context()
    accuracy = {"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.Report"},
                                "Path": "metrics.accuracy.value"}}
    threshold = {"Get": "Parameters.Threshold"}
    gte = {"Type": "GreaterThanOrEqualTo", "LeftValue": accuracy, "RightValue": threshold}
    lt = {"Type": "LessThan", "LeftValue": accuracy, "RightValue": threshold}
    assert ex.evaluate_condition(gte, ctx) and not ex.evaluate_condition(lt, ctx)
    assert ex.evaluate_condition({"Type": "Not", "Condition": lt}, ctx)
    assert ex.evaluate_condition({"Type": "Or", "Conditions": [lt, gte]}, ctx)
    assert not ex.evaluate_condition({"Type": "Or", "Conditions": [lt, lt]}, ctx)
    assert ex.evaluate_condition({"Type": "In", "QueryValue": {"Get": "Parameters.Name"},
                                  "Values": ["xgb", "cnn"]}, ctx)
    assert ex.evaluate_condition({"Type": "Equals", "LeftValue": {"Get": "Parameters.Epochs"}, "RightValue": 3.0}, ctx)
    assert ex.evaluate_condition({"Type": "GreaterThan", "LeftValue": "10", "RightValue": 9}, ctx)
    with pytest.raises(ex.ExpressionError, match="both must be numbers"):
        ex.evaluate_condition({"Type": "GreaterThan", "LeftValue": "cnn", "RightValue": 1}, ctx)
    with pytest.raises(ex.ExpressionError, match="unknown condition type"):
        ex.evaluate_condition({"Type": "Between"}, ctx)


def test_only_step_types_the_executor_runs_are_loaded():
    with pytest.raises(DefinitionError, match="Type 'Lambda' cannot run locally"):
        load({"Steps": [{"Name": "L", "Type": "Lambda", "Arguments": {}}]})
    with pytest.raises(DefinitionError, match="cycle"):
        load({"Steps": [{"Name": "A", "Type": "Fail", "Arguments": {}, "DependsOn": ["B"]},
                        {"Name": "B", "Type": "Fail", "Arguments": {}, "DependsOn": ["A"]}]})


def test_container_config_is_what_the_training_toolkit_reads(tmp_path):
    """The real sagemaker-training Environment over the files the executor writes (a subprocess: the toolkit
    reads SAGEMAKER_BASE_DIR at import)."""
    request = {"ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
               "InputDataConfig": [{"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/t"}}}]}
    hyperparameters = {"lr": "0.01", "epochs": "3", "arch": '"compact"', "flag": "true", "k": "5",
                       "sagemaker_program": '"training/train.py"', "sagemaker_submit_directory": '"s3://b/c.tar.gz"'}
    write_container_config(tmp_path / "input" / "config", request, hyperparameters, ["algo-1"], "algo-1")
    (tmp_path / "input" / "data" / "train").mkdir(parents=True)
    code = ("import json; from sagemaker_training import environment; e = environment.Environment(); "
            "print(json.dumps({'args': e.to_cmd_args(), 'channels': e.channel_input_dirs, 'hosts': e.hosts, "
            "'program': e.user_entry_point, 'module_dir': e.module_dir, 'type': e.current_instance_type}))")
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["args"] == ["--arch", "compact", "--epochs", "3", "--flag", "True", "-k", "5", "--lr", "0.01"]
    assert seen["channels"] == {"train": str(tmp_path / "input" / "data" / "train")}
    assert seen["hosts"] == ["algo-1"] and seen["type"] == "ml.m5.large"
    assert seen["program"] == "training/train.py" and seen["module_dir"] == "s3://b/c.tar.gz"


def test_several_hosts_get_addresses_they_can_reach():
    assert host_names("job", 1) == ["algo-1"]
    hosts = host_names("job", 3)
    assert len(set(hosts)) == 3 and all(h.startswith("127.") and h.endswith(f".{i}") for i, h in enumerate(hosts, 1))
    assert host_names("other-job", 2) != hosts[:2]


def test_metric_stream_reads_each_line_with_the_regexes():
    stream = MetricStream([{"Name": "validation:accuracy", "Regex": r"val_accuracy=([0-9.eE+-]+);"},
                           {"Name": "epoch", "Regex": r"epoch=([0-9]+);"}])
    assert stream.feed("metrics: epoch=1; val_accuracy=0.5;") == {"validation:accuracy": 0.5, "epoch": 1.0}
    assert stream.feed("nothing here") == {}
    stream.feed("metrics: epoch=2; val_accuracy=0.75;")
    assert stream.series == {"validation:accuracy": [0.5, 0.75], "epoch": [1.0, 2.0]}


def test_container_paths_are_rewritten(tmp_path):
    paths = PathMap(tmp_path)
    code = paths.add("/opt/ml/processing/input/code")
    paths.add("/data/raw")
    assert paths.rewrite("/opt/ml/processing/input/code/training/x.py") == f"{code}/training/x.py"
    assert paths.rewrite("--input=/data/raw/part") == f"--input={tmp_path}/data/raw/part"
    assert paths.rewrite("/opt/ml/processing/other") == f"{tmp_path}/opt/ml/processing/other"
    assert paths.rewrite("/usr/bin/env") == "/usr/bin/env"
    assert paths.rewrite("--seed") == "--seed" and paths.rewrite("a=b") == "a=b"


def test_durations_and_retry_delays():
    assert parse_duration("P30D").days == 30 and parse_duration("PT1H30M").seconds == 5400
    assert parse_duration(None) is None
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_duration("30 days")
    policies = [{"ExceptionType": [CAPACITY_ERROR], "IntervalSeconds": 2, "BackoffRate": 3.0, "MaxAttempts": 2}]
    now = time.time()
    assert retry_delay(policies, CAPACITY_ERROR, 0, now) == 2
    assert retry_delay(policies, CAPACITY_ERROR, 1, now) == 6
    assert retry_delay(policies, CAPACITY_ERROR, 2, now) is None
    assert retry_delay(policies, "Step.THROTTLING", 0, now) is None
    assert retry_delay(policies, None, 0, now) is None
    expiring = [{"ExceptionType": [CAPACITY_ERROR], "IntervalSeconds": 1, "ExpireAfterMin": 1}]
    assert retry_delay(expiring, CAPACITY_ERROR, 5, now) == 32
    assert retry_delay(expiring, CAPACITY_ERROR, 0, now - 120) is None


def test_job_names_are_valid_and_distinct():
    names = {job_name("abc123def456", "Train CNN/very-long-step-name-beyond-limits", a) for a in (1, 2)}
    assert len(names) == 2
    assert all(len(n) <= 63 and n.replace("-", "").isalnum() for n in names)


def test_process_exit_classification(tmp_path):
    log = tmp_path / "job.log"
    assert run_process([sys.executable, "-c", "print('hi')"], cwd=tmp_path, env={}, log_path=log) >= 0
    assert "hi" in log.read_text()
    with pytest.raises(JobFailed) as failed:
        run_process([sys.executable, "-c", "import sys; print('bad input', file=sys.stderr); sys.exit(3)"],
                    cwd=tmp_path, env={}, log_path=log)
    assert failed.value.exception_type is None and "exited with code 3" in failed.value.reason
    assert "bad input" in failed.value.reason
    with pytest.raises(JobFailed) as killed:
        run_process([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], cwd=tmp_path, env={},
                    log_path=log)
    assert killed.value.exception_type is None and "killed by SIGKILL" in killed.value.reason  # OOM: not retried
    with pytest.raises(JobFailed) as oom:
        run_process([sys.executable, "-c", "import sys; sys.exit(137)"], cwd=tmp_path, env={}, log_path=log)
    assert oom.value.exception_type is None and "exit code 137" in oom.value.reason
    with pytest.raises(JobFailed, match="MaxRuntimeExceeded"):
        run_process([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path, env={}, log_path=log,
                    timeout_s=0.5)
    stopped = []
    with pytest.raises(JobFailed) as early:
        run_process([sys.executable, "-c", "import time\nfor i in range(50): print(i, flush=True); time.sleep(.1)"],
                    cwd=tmp_path, env={}, log_path=log, on_line=lambda line: stopped.append(line) or len(stopped) > 2)
    assert early.value.status == "Stopped"


def test_extract_refuses_paths_outside_the_folder(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(JobFailed, match="cannot extract"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


RANGES = {"ContinuousParameterRanges": [{"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1",
                                         "ScalingType": "Logarithmic"}],
          "IntegerParameterRanges": [{"Name": "epochs", "MinValue": "2", "MaxValue": "8", "ScalingType": "Auto"}],
          "CategoricalParameterRanges": [{"Name": "batch-size", "Values": ['"64"', '"128"']}]}


def _check(tuned):
    assert 0.001 <= float(tuned["lr"]) <= 0.1
    assert tuned["epochs"].isdigit() and 2 <= int(tuned["epochs"]) <= 8
    assert tuned["batch-size"] in ('"64"', '"128"')


def test_random_search_stays_in_range_and_uses_log_scale():
    strategy = RandomSearch(parse_ranges(RANGES), True, seed=1, max_jobs=200)
    samples = [strategy.suggest() for _ in range(200)]
    for tuned in samples:
        _check(tuned)
    below_0_01 = sum(float(t["lr"]) < 0.01 for t in samples)
    assert 70 < below_0_01 < 130  # half the draws below the geometric midpoint on a log scale
    again = RandomSearch(parse_ranges(RANGES), True, seed=1, max_jobs=200)
    assert samples == [again.suggest() for _ in range(200)]  # seeded: reproducible


def test_grid_search_exhausts_and_needs_categorical_ranges():
    grid = GridSearch([Range("Categorical", {"Name": "a", "Values": ["1", "2"]}),
                       Range("Categorical", {"Name": "b", "Values": ["x", "y", "z"]})], True, 0, 10)
    seen = []
    while (tuned := grid.suggest()) is not None:
        seen.append(tuned)
    assert len(seen) == 6 and len({tuple(t.values()) for t in seen}) == 6
    with pytest.raises(JobFailed, match="categorical"):
        GridSearch(parse_ranges(RANGES), True, 0, 10)


def test_bayesian_search_learns_from_results():
    strategy = BayesianSearch(parse_ranges(RANGES), True, seed=3, max_jobs=20)
    rng = random.Random(0)
    for _ in range(20):
        tuned = strategy.suggest()
        _check(tuned)
        strategy.observe(tuned, None if rng.random() < 0.1 else -abs(float(tuned["lr"]) - 0.01))
    best = strategy.study.best_trial.params["lr"]
    assert 0.003 < best < 0.03


def test_range_errors():
    with pytest.raises(JobFailed, match="MinValue > 0"):
        Range("Continuous", {"Name": "lr", "MinValue": "0", "MaxValue": "1", "ScalingType": "Logarithmic"})
    with pytest.raises(JobFailed, match="no range"):
        parse_ranges({})


def test_median_stopping_rule():
    rule = MedianStopping("acc", maximize=True)
    assert not rule.should_stop({"acc": [0.1]})  # not enough finished trials yet
    for series in ([0.5, 0.8], [0.6, 0.85], [0.7, 0.9]):
        rule.add(series)
    assert rule.should_stop({"acc": [0.2]})
    assert not rule.should_stop({"acc": [0.65]})
    assert rule.should_stop({"acc": [0.65, 0.7]})  # median of running averages at epoch 2 is 0.725


def test_live_reporter_renders(tmp_path):
    from rich.console import Console

    from mlops.local.progress import LiveReporter, PlainReporter, summary_lines

    out = io.StringIO()
    live = LiveReporter(Console(file=out, force_terminal=True, width=120))
    live.start("abc", {"Prep": "Processing", "Train": "Training"})
    live.step_status("Prep", "Executing")
    live.step_progress("Prep", "epoch 3/5 validation:accuracy 0.9800")
    live.step_status("Prep", "Succeeded")
    live.mark_skipped(["Train"])
    live.stop()
    text = out.getvalue()
    assert "epoch 3/5" in text or "Succeeded" in text
    plain_out = io.StringIO()
    plain = PlainReporter(plain_out, throttle_s=10)
    plain.step_progress("Train", "epoch 1")
    plain.step_progress("Train", "epoch 2")  # throttled
    assert "epoch 1" in plain_out.getvalue() and "epoch 2" not in plain_out.getvalue()
    lines = summary_lines({"execution_id": "abc", "status": "Succeeded", "elapsed_s": 3.0,
                           "report_path": "/r.html", "model_package_version": 4, "model_package_group": "g",
                           "model_approval_status": "PendingManualApproval"})
    assert "  next: mlops registry approve --version 4" in lines and "  report: /r.html" in lines


