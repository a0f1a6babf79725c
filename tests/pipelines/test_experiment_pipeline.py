"""The experiment pipeline's definition: one Preprocess, a training and an evaluation job per planned run."""

from __future__ import annotations

import json

from mlops.definition.model import parse
from mlops.definition.validate import errors_only, validate_definition
from pipelines.image_classification.experiment import PlannedJob, get_experiment_pipeline
from pipelines.image_classification.session import quiet_sdk

ROLE, BUCKET = "arn:aws:iam::000000000000:role/mlops-local", "mlops-local"


def _definition(lanes: int) -> dict:
    jobs = [PlannedJob(f"Train-V{v}-seed{s}", f"Evaluate-V{v}-seed{s}", {"kernel-size": k, "seed": s})
            for s in (1, 2) for v, k in enumerate((3, 5))]
    pipeline = get_experiment_pipeline(jobs, role=ROLE, default_bucket=BUCKET, lanes=lanes)
    with quiet_sdk():
        return json.loads(pipeline.definition())


def test_valid_and_only_preprocess_is_cached():
    definition = _definition(lanes=1)
    assert errors_only(validate_definition(definition)) == []
    steps = {s["Name"]: s for s in definition["Steps"]}
    assert len(steps) == 9 and steps["Preprocess"]["CacheConfig"]["Enabled"] is True
    train = steps["Train-V1-seed2"]["Arguments"]
    assert train["HyperParameters"]["kernel-size"] == "5" and train["HyperParameters"]["seed"] == "2"
    assert train["HyperParameters"]["epochs"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.CnnEpochs"}]}}
    assert "DebugHookConfig" not in train and "ProfilerConfig" not in train or \
        train["ProfilerConfig"].get("DisableProfiler") is True
    for name, step in steps.items():
        if name != "Preprocess":
            assert step["CacheConfig"]["Enabled"] is False, name
    evaluate = steps["Evaluate-V1-seed2"]["Arguments"]["ProcessingInputs"]
    assert {"Get": "Steps.Train-V1-seed2.ModelArtifacts.S3ModelArtifacts"} in \
        [i["S3Input"]["S3Uri"] for i in evaluate]


def test_lanes_chain_the_jobs():
    one = parse(_definition(lanes=1))
    assert one.order()[:5] == ["Preprocess", "Train-V0-seed1", "Evaluate-V0-seed1", "Train-V1-seed1",
                               "Evaluate-V1-seed1"]
    assert one.steps["Train-V1-seed1"].depends_on == ["Evaluate-V0-seed1"]
    two = parse(_definition(lanes=2))
    assert two.steps["Train-V1-seed1"].depends_on == []
    assert two.steps["Train-V0-seed2"].depends_on == ["Evaluate-V0-seed1"]
