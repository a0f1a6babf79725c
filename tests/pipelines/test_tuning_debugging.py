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
            assert isinstance(action, str), "static: SageMaker's cache key holds DebugRuleConfigurations"
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


def _smdebug_stops(action_json: str, in_progress: list[str], monkeypatch) -> list[str]:
    """What smdebug's own StopTraining action stops when ListTrainingJobs(InProgress) answers ``in_progress``."""
    from smdebug.rules.action import action, stop_training_action

    stopped: list[str] = []

    class SageMaker:
        def list_training_jobs(self, NameContains, **kwargs):
            return {"TrainingJobSummaries": [{"TrainingJobName": n, "TrainingJobStatus": "InProgress"}
                                             for n in in_progress if NameContains.lower() in n.lower()]}

        def stop_training_job(self, TrainingJobName):
            stopped.append(TrainingJobName)

    monkeypatch.setattr(stop_training_action.boto3, "client", lambda *args, **kwargs: SageMaker())
    action.Actions(action_json.replace('\\"', '"'), "VanishingGradient").invoke("fired")
    return stopped


def test_stop_training_stops_the_pipeline_job_the_way_smdebug_matches_names(monkeypatch):
    """smdebug lower-cases the action, then matches names case-sensitively; pipeline job names keep the step's
    case (pipelines-<execution id>-TrainCNN-...). The prefix must still match, and not vary per execution."""
    rules = {r["RuleConfigurationName"]: r for r in step(build(), "TrainCNN")["DebugRuleConfigurations"]}
    action_json = rules["VanishingGradient"]["RuleParameters"]["action_json"]
    job = "pipelines-h1bfwm9d4ra7-TrainCNN-Xk3vPq9LmA"
    assert _smdebug_stops(action_json, [job], monkeypatch) == [job]
    # smdebug stops only a unique match: another pipeline job running at the same moment means no stop at all.
    assert _smdebug_stops(action_json, [job, "pipelines-0a1b2c3d4e5f-TrainXGBoost-Yt5"], monkeypatch) == []
    from mlops.local.rules import stop_prefix, stop_target

    prefix = stop_prefix({"action_json": action_json})
    assert stop_target(prefix, [job]) == job and stop_target(prefix, [job, "pipelines-x-Other"]) is None
