"""The definition's tuner (per strategy), Debugger rules and ProfilerConfig on TrainCNN."""

from __future__ import annotations

import json

import pytest

from mlops.definition.validate import errors_only, validate_definition
from pipelines.image_classification import debugging, tuning
from pipelines.image_classification.pipeline import get_pipeline
from pipelines.image_classification.session import quiet_sdk

BUCKET = "bucket"
ROLE = "arn:aws:iam::000000000000:role/Pipelines"


def build(strategy: str = "Bayesian") -> dict:
    built = get_pipeline(role=ROLE, default_bucket=BUCKET, tuning_strategy=strategy)
    with quiet_sdk():
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
        if name in debugging.STOPPING_RULES:
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
        "StartStep": debugging.PROFILE_START_STEP, "NumSteps": debugging.PROFILE_NUM_STEPS}


def test_tuning_trials_train_on_a_subset_without_debugger():
    definition = build()
    tune = step(definition, "TuneCNN")
    training = tune["TrainingJobDefinition"]
    assert training["StaticHyperParameters"]["train-fraction"] == str(tuning.TUNING_TRAIN_FRACTION)
    assert "DebugHookConfig" not in training
    names = {r["Name"] for kind in tune["HyperParameterTuningJobConfig"]["ParameterRanges"].values() for r in kind}
    assert names == {"lr", "batch-size", "epochs", "architecture"}


@pytest.mark.parametrize("strategy", ["Grid", "Hyperband", "Random"])
def test_each_strategy_builds_a_valid_tuning_job(strategy):
    definition = build(strategy)
    config = step(definition, "TuneCNN")["HyperParameterTuningJobConfig"]
    parameters = {p["Name"]: p for p in definition["Parameters"]}
    assert config["Strategy"] == {"Get": "Parameters.TuningStrategy"}
    assert config["TrainingJobEarlyStoppingType"] == {"Get": "Parameters.TuningEarlyStoppingType"}
    assert parameters["TuningStrategy"]["DefaultValue"] == strategy
    if strategy == "Random":  # Bayesian and Random share a shape: either can be chosen per execution
        assert parameters["TuningStrategy"]["EnumValues"] == ["Bayesian", "Random"]
        assert parameters["TuningEarlyStoppingType"]["EnumValues"] == ["Auto", "Off"]
    else:  # the build's shape fits only its own strategy, without early stopping
        assert parameters["TuningStrategy"]["EnumValues"] == [strategy]
        assert parameters["TuningEarlyStoppingType"] == {"Name": "TuningEarlyStoppingType", "Type": "String",
                                                         "DefaultValue": "Off", "EnumValues": ["Off"]}
    if strategy == "Grid":
        assert {kind for kind, ranges in config["ParameterRanges"].items() if ranges} == {"CategoricalParameterRanges"}
    if strategy == "Hyperband":
        assert config["StrategyConfig"]["HyperbandStrategyConfig"]["MaxResource"] == tuning.HYPERBAND_MAX_EPOCHS
        assert "epochs" not in {r["Name"] for kind in config["ParameterRanges"].values() for r in kind}
    assert errors_only(validate_definition(definition)) == []


def test_the_parameter_set_is_the_same_for_every_strategy():
    names = {strategy: [p["Name"] for p in build(strategy)["Parameters"]] for strategy in tuning.STRATEGIES}
    assert len({tuple(found) for found in names.values()}) == 1, names


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="tuning strategy 'Annealing': expected one of Bayesian"):
        build("Annealing")
