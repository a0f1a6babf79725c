"""Step priorities: the longest remaining path, from defaults or the last successful execution's durations."""

from __future__ import annotations

import json
from pathlib import Path

from mlops.definition.model import parse
from mlops.local import critical_path

SNAPSHOT = Path(__file__).resolve().parents[2] / "pipelines" / "snapshots" / "pipeline_definition.json"


def _definition():
    return parse(json.loads(SNAPSHOT.read_text()))


def test_with_defaults_the_tuner_path_outranks_the_baseline():
    definition = _definition()
    seconds = critical_path.step_seconds(definition, {})
    ranks = critical_path.priorities(definition, seconds)
    assert ranks["TuneCNN"] > ranks["TrainXGBoost"] > ranks["EvaluateBaseline"]
    assert ranks["TuneCNN"] == 240.0 + ranks["TrainCNN"]  # the search, then the final training waits for it
    assert ranks["Preprocess"] == max(ranks.values())
    path = critical_path.critical_path(definition, seconds)
    assert path[:4] == ["Preprocess", "TuneCNN", "TrainCNN", "Evaluate"]
    assert path[-2] == "CheckAccuracy"


def test_measured_durations_reorder_the_queue():
    definition = _definition()
    # A run where the baseline was the long pole: XGBoost must now go first.
    measured = {"TuneCNN": 20.0, "TrainCNN": 30.0, "TrainXGBoost": 400.0, "EvaluateBaseline": 5.0}
    ranks = critical_path.priorities(definition, critical_path.step_seconds(definition, measured))
    assert ranks["TrainXGBoost"] > ranks["TuneCNN"]
    assert ranks["TrainXGBoost"] == 400.0 + 5.0 + ranks["Evaluate"]
    path = critical_path.critical_path(definition, critical_path.step_seconds(definition, measured))
    assert path[1:3] == ["TrainXGBoost", "EvaluateBaseline"]
