"""The real definition (pipelines/image_classification) run by `mlops run` on a small MNIST slice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops.local import commands, records


@pytest.mark.slow
def test_mlops_run_executes_the_real_definition_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "mlops"))
    monkeypatch.setenv("MLOPS_CPUS", "2")
    from mlops.cli import main

    params = ["--param", "MaxTrainSamples=1500", "--param", "MaxTestSamples=300", "--param", "CnnEpochs=1",
              "--param", "XGBoostNumRound=5", "--param", "TuningMaxJobs=2", "--param", "TuningMaxParallelJobs=2",
              "--param", "AccuracyThreshold=0.0"]
    result = CliRunner().invoke(main, ["run", *params])
    executions = commands.list_executions()
    assert len(executions) == 1, result.output
    execution_id = executions[0]["PipelineExecutionId"]
    steps = {s.step_name: s for s in records.list_steps(execution_id)}
    for name in ("Preprocess", "TrainCNN", "TrainXGBoost", "TuneCNN", "Evaluate", "CheckAccuracy"):
        assert steps[name].status == "Succeeded", (name, steps[name].failure_reason, result.output)
    # the branch the condition chose ran, the other did not
    outcome = steps["CheckAccuracy"].properties["Outcome"]
    assert ("RegisterModel-RegisterModel" in steps) == (outcome == "True")
    assert ("FailAccuracy" in steps) == (outcome == "False")
    evaluation = steps["Evaluate"].metadata["PropertyFiles"]["EvaluationReport"]
    assert 0.0 <= evaluation["multiclass_classification_metrics"]["accuracy"]["value"] <= 1.0
    trials = [j for j in records.list_jobs(execution_id, "TuneCNN") if j["job_type"] == "Training"]
    assert len(trials) == 2
    assert json.loads(trials[0]["hyperparameters"]["_tuning_objective_metric"]) == "validation:accuracy"
    cnn_hps = steps["TrainCNN"].properties["HyperParameters"]
    assert cnn_hps["epochs"] == "1"
    report = commands.describe_execution(execution_id)["ReportPath"]
    assert "confusion_matrix.png" in Path(report).read_text()

    # nothing changed: everything that can be cached is
    CliRunner().invoke(main, ["run", *params])
    second = commands.list_executions()[0]["PipelineExecutionId"]
    cached = {s.step_name for s in records.list_steps(second) if s.cache_source == execution_id}
    assert cached == {"Preprocess", "TrainCNN", "TrainXGBoost", "TuneCNN", "Evaluate"}
