"""The definition's tuner (per strategy), Debugger rules and ProfilerConfig on TrainCNN."""

from __future__ import annotations

import json

import pytest

from pipelines.image_classification import pipeline as module
from mlops.definition.validate import errors_only, validate_definition

BUCKET = "bucket"
ROLE = "arn:aws:iam::000000000000:role/Pipelines"


def build(strategy: str | None = None) -> dict:
    built = module.get_pipeline(role=ROLE, default_bucket=BUCKET, tuning_strategy=strategy)
    with module.quiet_sdk():
        return json.loads(built.definition())


def step(definition: dict, name: str) -> dict:
    return next(s for s in definition["Steps"] if s["Name"] == name)["Arguments"]


def test_train_cnn_carries_hook_rules_with_stop_action_and_profiler():
    arguments = step(build(), "TrainCNN")
    rules = {r["RuleConfigurationName"]: r for r in arguments["DebugRuleConfigurations"]}
    assert set(rules) == {"VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization",
                          "LossNotDecreasing"}
    for name, rule in rules.items():
        action = rule["RuleParameters"].get("action_json")
        if name in module.STOPPING_RULES:
            values = action["Std:Join"]["Values"]
            assert {"Get": "Execution.PipelineExecutionId"} in values and "stoptraining" in values[-1]
            assert values[0].endswith("pipelines-") and values[-1].startswith("-TrainCNN")
        else:
            assert action is None
    collections = [c["CollectionName"] for c in arguments["DebugHookConfig"]["CollectionConfigurations"]]
    assert collections == sorted(set(collections))  # one entry per collection, stable order
    assert {"losses", "gradients", "weights", "biases", "relu_input", "relu_output"} <= set(collections)
    profiler = arguments["ProfilerConfig"]
    assert profiler["ProfilingIntervalInMilliseconds"] == 500
    assert json.loads(profiler["ProfilingParameters"]["DetailedProfilingConfig"].replace(", }", "}")) == {
        "StartStep": module.PROFILE_START_STEP, "NumSteps": module.PROFILE_NUM_STEPS}


def test_tuning_trials_train_on_a_subset_without_debugger():
    definition = build()
    tuning = step(definition, "TuneCNN")
    training = tuning["TrainingJobDefinition"]
    assert training["StaticHyperParameters"]["train-fraction"] == str(module.TUNING_TRAIN_FRACTION)
    assert "DebugHookConfig" not in training
    names = {r["Name"] for kind in tuning["HyperParameterTuningJobConfig"]["ParameterRanges"].values() for r in kind}
    assert names == {"lr", "batch-size", "epochs", "architecture"}


@pytest.mark.parametrize("strategy", ["Grid", "Hyperband", "Random"])
def test_each_strategy_builds_a_valid_tuning_job(strategy):
    definition = build(strategy)
    config = step(definition, "TuneCNN")["HyperParameterTuningJobConfig"]
    if strategy == "Random":
        assert config["Strategy"] == {"Get": "Parameters.TuningStrategy"}
        assert next(p for p in definition["Parameters"] if p["Name"] == "TuningStrategy")["DefaultValue"] == "Random"
    else:
        assert config["Strategy"] == strategy
        assert "TuningStrategy" not in {p["Name"] for p in definition["Parameters"]}
    if strategy == "Grid":
        assert {kind for kind, ranges in config["ParameterRanges"].items() if ranges} == {"CategoricalParameterRanges"}
    if strategy == "Hyperband":
        assert config["StrategyConfig"]["HyperbandStrategyConfig"]["MaxResource"] == module.HYPERBAND_MAX_EPOCHS
        assert "epochs" not in {r["Name"] for kind in config["ParameterRanges"].values() for r in kind}
    assert errors_only(validate_definition(definition)) == []


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="tuning_strategy='Annealing'"):
        build("Annealing")
