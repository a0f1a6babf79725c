"""The report's step timeline: cores held, time spent waiting for one, and the critical path."""

from __future__ import annotations

import json
from pathlib import Path

from mlops.local import records, report

SNAPSHOT = Path(__file__).resolve().parents[2] / "pipelines" / "snapshots" / "pipeline_definition.json"


def _step(name: str, start: float, seconds: float, **metadata) -> records.StepRecord:
    return records.StepRecord(execution_id="e1", step_name=name, step_type="Training", status="Succeeded",
                              start_time=start, end_time=start + seconds, failure_reason=None, attempt_count=1,
                              cache_key=None, cache_source=None, properties={}, metadata=metadata, log_path=None,
                              work_dir=None, cpus=None)


def _execution() -> records.Execution:
    return records.Execution(execution_id="e1", pipeline_name="p", status="Succeeded", creation_time=0.0,
                             last_modified_time=0.0, end_time=None, failure_reason=None, parameters={},
                             definition=json.loads(SNAPSHOT.read_text()), runner_pid=None, runner_started=None,
                             runner_host=None, report_path=None)


def test_the_cpu_label_shows_a_grant_that_grew():
    assert report._cpu_label(_step("TrainCNN", 0, 10, Cpus=1, PeakCpus=2)) == ", 1->2 cpu"
    assert report._cpu_label(_step("Evaluate", 0, 10, Cpus=2, PeakCpus=2)) == ", 2 cpu"
    assert report._cpu_label(_step("CheckAccuracy", 0, 0)) == ""


def test_the_critical_path_follows_what_the_steps_took():
    steps = [_step("Preprocess", 0, 4), _step("TuneCNN", 4, 60), _step("TrainXGBoost", 4, 170),
             _step("TrainCNN", 64, 260), _step("EvaluateBaseline", 174, 3), _step("Evaluate", 324, 6),
             _step("CheckAccuracy", 330, 0), _step("Register-RegisterModel", 330, 0.1)]
    critical = report._critical_steps(_execution(), steps)
    assert critical == {"Preprocess", "TuneCNN", "TrainCNN", "Evaluate", "CheckAccuracy", "Register-RegisterModel"}
    slow_baseline = [s if s.step_name != "TrainXGBoost" else _step("TrainXGBoost", 4, 400) for s in steps]
    assert "TrainXGBoost" in report._critical_steps(_execution(), slow_baseline)


def test_the_timeline_draws_with_waits_and_grants():
    steps = [_step("Preprocess", 0, 4, Cpus=2), _step("TrainXGBoost", 4, 170, Cpus=1, CpuWaitSeconds=42.0)]
    assert report.timeline(_execution(), steps).startswith("data:image/png;base64,")
