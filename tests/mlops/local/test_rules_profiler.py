"""Debugger rules, the profiler and the Hyperband tuner, on real smdebug trials written by real jobs.

The rules must be able to fail: a saturated network triggers VanishingGradient, a tiny training set trained
for many epochs triggers Overfit, a second layer initialised 100 times too small triggers
PoorWeightInitialization, a learning rate of 0 triggers LossNotDecreasing, memorised random labels trigger
Overtraining, and a healthy run triggers none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlops.local.profiler import SystemSampler, findings, render, step_statistics
from mlops.local.rules import RuleRunner
from tests.helpers import ROOT
from tests.helpers.jobs import run_job, training_env

JOB = "pipelines-exec1-TrainCNN-a1"


@pytest.fixture(scope="module")
def train_cnn_args() -> dict:
    """TrainCNN's Debugger/Profiler settings from the real definition."""
    from mlops.definition.build import build_definition
    from mlops.definition.config import PipelineConfig

    definition = build_definition(PipelineConfig())
    return next(s for s in definition["Steps"] if s["Name"] == "TrainCNN")["Arguments"]


def _configure(work: Path, arguments: dict) -> dict[str, str]:
    """The config files SageMaker writes for the job, and SM_INPUT_CONFIG_DIR as the training toolkit sets it."""
    from mlops.local.instrument import JobInstruments

    return {**JobInstruments(arguments, JOB, work).environment(), "SM_INPUT_CONFIG_DIR": str(work / "input" / "config")}


def _statuses(work: Path, arguments: dict, job: str = JOB) -> dict[str, dict]:
    runner = RuleRunner(work / "output" / "tensors", arguments["DebugRuleConfigurations"], job)
    return {s["RuleConfigurationName"]: s for s in runner.finish()}


def _train(mnist_slice: Path, work: Path, arguments: dict, args: list[str]) -> subprocess.CompletedProcess:
    env = training_env(mnist_slice / "train", mnist_slice / "validation", work / "model", work / "output")
    env.update(_configure(work, arguments), SM_NUM_CPUS="1")
    result = run_job("train_cnn.py", args, env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_healthy_run_triggers_no_rule_and_profiles_its_steps(mnist_slice, tmp_path, train_cnn_args):
    _train(mnist_slice, tmp_path, train_cnn_args, ["--epochs", "2", "--batch-size", "64"])
    statuses = _statuses(tmp_path, train_cnn_args)
    assert set(statuses) == {"VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization",
                             "LossNotDecreasing"}
    assert {s["RuleEvaluationStatus"] for s in statuses.values()} == {"NoIssuesFound"}, statuses
    framework = tmp_path / "output" / "profiler" / "framework"
    steps = json.loads((framework / "step_times.json").read_text())["steps"]
    assert len(steps) >= 80 and all(s[3] > 0 for s in steps)
    profile = json.loads((framework / "torch_profile.json").read_text())
    assert profile["start_step"] == 5 and profile["num_steps"] == 10 and profile["top_ops"]
    assert (framework / "torch_trace.json").stat().st_size > 0


@pytest.mark.slow
def test_tiny_training_set_with_many_epochs_triggers_overfit(mnist_slice, tmp_path, train_cnn_args):
    _train(mnist_slice, tmp_path, train_cnn_args,
           ["--epochs", "30", "--batch-size", "16", "--train-fraction", "0.02", "--augment", "false",
            "--dropout", "0", "--weight-decay", "0", "--scheduler", "none", "--lr", "0.01"])
    statuses = _statuses(tmp_path, train_cnn_args)
    overfit = statuses["Overfit"]
    assert overfit["RuleEvaluationStatus"] == "IssuesFound", statuses
    assert "at step" in overfit["StatusDetails"] and "ratio" in overfit["StatusDetails"]
    assert statuses["VanishingGradient"]["RuleEvaluationStatus"] == "NoIssuesFound"


SATURATED = textwrap.dedent("""
    import sys, torch
    from torch import nn
    sys.path.insert(0, sys.argv[1])
    from training.debugger import session_from_env
    torch.manual_seed(0)
    # Sigmoids fed huge pre-activations: saturated, so the gradients of the first layers vanish.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.Sigmoid(),
                          nn.Linear(32, 10))
    with torch.no_grad():
        for layer in (model[1], model[3]):
            layer.weight.mul_(1e4)
    loss_fn = nn.CrossEntropyLoss()
    session = session_from_env()
    session.attach(model, loss_fn)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    session.set_mode("train")
    for step in range(60):
        x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        session.step()
    session.close()
""")


@pytest.mark.slow
def test_saturated_activations_trigger_vanishing_gradient_and_its_stop_action(tmp_path, train_cnn_args):
    env = {**os.environ, **_configure(tmp_path, train_cnn_args)}
    result = subprocess.run([sys.executable, "-c", SATURATED, str(ROOT)], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    runner = RuleRunner(tmp_path / "output" / "tensors", train_cnn_args["DebugRuleConfigurations"], JOB)
    # StopTraining: this job is the one InProgress training job with the prefix
    assert "VanishingGradient" in runner.poll(final=True)
    vanishing = runner.finish()[0]
    assert vanishing["RuleEvaluationStatus"] == "IssuesFound"
    assert "mean |gradient|" in vanishing["StatusDetails"] and "< threshold 1e-07" in vanishing["StatusDetails"]
    crowded = RuleRunner(tmp_path / "output" / "tensors", train_cnn_args["DebugRuleConfigurations"], JOB,
                         in_progress=lambda: [JOB, "pipelines-otherexec-TrainXGBoost-a1"])
    assert crowded.poll(final=True) == []  # smdebug stops only a unique match


BUILT_TO_TRIGGER = textwrap.dedent("""
    import sys, torch
    import torch.nn.functional as F
    from torch import nn
    sys.path.insert(0, sys.argv[1])
    from training.debugger import session_from_env
    kind = sys.argv[2]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    loss_fn = nn.CrossEntropyLoss()
    session = session_from_env()
    session.attach(model, loss_fn)
    x_train, y_train = torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))
    x_val, y_val = torch.randn(128, 1, 8, 8), torch.randint(0, 10, (128,))
    if kind == "poor-init":
        # The second layer starts 100 times too small: its ReLU inputs have 1e-4 times the first layer's variance.
        with torch.no_grad():
            model[3].weight.mul_(0.01)
            model[3].bias.zero_()
        optimizer, epochs, validate = torch.optim.SGD(model.parameters(), lr=1e-4), 3, False
    elif kind == "flat-loss":
        # Nothing is learnt; the rule reads validation losses (mode EVAL in the definition), one per epoch here.
        optimizer, epochs, validate = torch.optim.SGD(model.parameters(), lr=0.0), 15, True
    else:  # "overtrain": random labels, memorised; the validation loss only grows
        optimizer, epochs, validate = torch.optim.Adam(model.parameters(), lr=0.01), 40, True
    for epoch in range(epochs):
        model.train()
        session.set_mode("train")
        for start in range(0, 128, 32):
            optimizer.zero_grad()
            loss_fn(model(x_train[start:start + 32]), y_train[start:start + 32]).backward()
            optimizer.step()
            session.step()
        if validate:
            model.eval()
            session.set_mode("eval")
            with torch.no_grad():
                session.record_validation(float(F.cross_entropy(model(x_val), y_val)))
    session.close()
""")


@pytest.mark.slow
@pytest.mark.parametrize("kind, rule, detail", [
    ("poor-init", "PoorWeightInitialization", "variance of ReLU inputs"),
    ("flat-loss", "LossNotDecreasing", "diff_percent"),
    ("overtrain", "Overtraining", "has not improved"),
])
def test_a_run_built_to_trigger_a_rule_triggers_it(tmp_path, train_cnn_args, kind, rule, detail):
    env = {**os.environ, **_configure(tmp_path, train_cnn_args)}
    result = subprocess.run([sys.executable, "-c", BUILT_TO_TRIGGER, str(ROOT), kind], env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    statuses = _statuses(tmp_path, train_cnn_args)
    assert statuses[rule]["RuleEvaluationStatus"] == "IssuesFound", statuses
    assert detail in statuses[rule]["StatusDetails"] and "at step" in statuses[rule]["StatusDetails"]
    assert statuses["VanishingGradient"]["RuleEvaluationStatus"] == "NoIssuesFound", statuses


def test_rules_without_data_report_error(tmp_path, train_cnn_args):
    statuses = _statuses(tmp_path, train_cnn_args)
    assert {s["RuleEvaluationStatus"] for s in statuses.values()} == {"Error"}
    assert "no Debugger data" in statuses["Overfit"]["StatusDetails"]


def test_unknown_rule_is_an_error_not_a_pass(tmp_path):
    runner = RuleRunner(tmp_path, [{"RuleConfigurationName": "Mystery", "RuleParameters":
                                    {"rule_to_invoke": "ExplodingUnicorn"}}], JOB)
    status = runner.finish()[0]
    assert status["RuleEvaluationStatus"] == "Error" and "ExplodingUnicorn" in status["StatusDetails"]


def test_system_sampler_sees_a_busy_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import time\nend=time.time()+2.5\nwhile time.time()<end: pass"])
    sampler = SystemSampler(0.2)
    sampler.start(child.pid)
    child.wait()
    samples = sampler.stop()
    assert len(samples) >= 5
    assert max(s["cpu_percent"] for s in samples) > 30 and all(s["rss_mb"] > 1 for s in samples[:3])


def test_report_names_the_data_loader_when_it_is_the_bottleneck():
    slow_data = {"steps": [[i, time.time(), 0.03, 0.01] for i in range(50)]}
    stats = step_statistics(slow_data)
    assert stats["data_share"] == pytest.approx(0.75)
    assert any("data loader is the bottleneck" in f for f in findings(stats, [], 1))
    fast_data = {"steps": [[i, time.time(), 0.001, 0.05] for i in range(50)]}
    assert not any("data loader" in f for f in findings(step_statistics(fast_data), [], 1))
    page = render("job-x", [], slow_data, None, 1, 500)
    assert "data loader is the bottleneck" in page and "step-time distribution" not in page or "<img" in page


def test_hyperband_stops_a_weak_trial_and_outputs_are_written(tmp_path):
    from mlops.local.search import HyperbandSearch, Range
    from mlops.local.tuning_outputs import TRIALS_CSV, TUNING_JSON, TUNING_PNG, write_outputs

    ranges = [Range("Continuous", {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"})]
    search = HyperbandSearch(ranges, True, 7, 12)
    search.configure({"StrategyConfig": {"HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 9}}},
                     {}, "validation:accuracy")
    stopped = 0
    summaries = []
    for index in range(12):
        tuned = search.suggest()
        check = search.monitor(tuned)
        quality = 0.9 if index % 3 else 0.2  # every third trial is weak
        series: dict[str, list[float]] = {"validation:accuracy": []}
        status = "Completed"
        for epoch in range(1, 10):
            series["validation:accuracy"].append(quality * (1 - 0.5 / epoch))
            if check(series):
                status = "Stopped"
                stopped += 1
                break
        value = series["validation:accuracy"][-1]
        search.observe(tuned, value)
        summaries.append({"TrainingJobName": f"t-{index}", "TrainingJobStatus": status, "TunedHyperParameters": tuned,
                          "CreationTime": index, "FinalHyperParameterTuningJobObjectiveMetric":
                          {"MetricName": "validation:accuracy", "Value": value}})
    assert stopped >= 1
    assert any(s["TrainingJobStatus"] == "Stopped" and s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] < 0.2
               for s in summaries)
    folder = write_outputs(tmp_path, {"BestTrainingJob": summaries[1]}, summaries, "validation:accuracy")
    assert (folder / TUNING_PNG).stat().st_size > 1000
    assert (folder / TRIALS_CSV).read_text().count("\n") == 13
    assert json.loads((folder / TUNING_JSON).read_text())["BestTrainingJob"]["TrainingJobName"] == "t-1"
