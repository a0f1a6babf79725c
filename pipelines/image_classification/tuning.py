"""TuneCNN: the hyperparameter tuner over the CNN, and what TrainCNN takes from its best trial.

Trials train on a stratified ``TUNING_TRAIN_FRACTION`` of the training split for a few epochs, so the best
trial ranks hyperparameters well but is a weak model; TrainCNN then trains once on all the data with the
best trial's ``TUNED_FINAL_HYPERPARAMETERS`` (docs/decisions.md has the measurements behind both choices).
"""

from __future__ import annotations

from sagemaker.estimator import EstimatorBase
from sagemaker.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
from sagemaker.tuner import HyperbandStrategyConfig, HyperparameterTuner, StrategyConfig

from pipelines.image_classification.parameters import TUNED_ARCHITECTURES, Parameters
from training.metrics import CNN_METRIC_DEFINITIONS, OBJECTIVE_METRIC

STRATEGIES = ("Bayesian", "Random", "Grid", "Hyperband")
TUNING_TRAIN_FRACTION = 0.3
# The tuned epoch count is a budget on the subset, not a count for the full data (CnnEpochs is), and the
# architecture is the CnnArchitecture parameter.
TUNED_FINAL_HYPERPARAMETERS = ("batch-size", "lr")
HYPERBAND_MAX_EPOCHS = 4


def tuning_ranges(strategy: str) -> dict:
    """What the tuner searches: learning rate (log), batch size, epochs and the architecture.

    Grid takes categorical ranges only; Hyperband owns the epochs (its resource), so it does not search them.
    """
    if strategy == "Grid":
        return {"lr": CategoricalParameter([0.02, 0.05]), "batch-size": CategoricalParameter([128, 256]),
                "epochs": CategoricalParameter([2]), "architecture": CategoricalParameter(TUNED_ARCHITECTURES)}
    ranges = {
        # train_cnn's default optimizer is SGD (nesterov, one-cycle) with lr 0.05: search a decade around it.
        "lr": ContinuousParameter(0.015, 0.15, scaling_type="Logarithmic"),
        # Not 64: trials of 2-3 epochs on a subset favour the most updates, and on a CPU batch 64 is the
        # slowest per epoch for the full training (13.5 vs 12 s with bfloat16 + channels-last, 2 threads).
        "batch-size": CategoricalParameter([128, 256]),
        "epochs": IntegerParameter(2, 3),
        "architecture": CategoricalParameter(TUNED_ARCHITECTURES),
    }
    if strategy == "Hyperband":
        del ranges["epochs"]
    return ranges


def make_tuner(estimator: EstimatorBase, params: Parameters, strategy: str, base_job_prefix: str) -> HyperparameterTuner:
    """The tuner for a build's ``strategy`` (one of STRATEGIES); the run-time choice is Parameters.tuning_strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"tuning strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    options: dict = {"strategy": params.tuning_strategy, "early_stopping_type": params.tuning_early_stopping}
    if strategy == "Hyperband":
        estimator.set_hyperparameters(epochs=HYPERBAND_MAX_EPOCHS)
        options["strategy_config"] = StrategyConfig(HyperbandStrategyConfig(min_resource=1,
                                                                            max_resource=HYPERBAND_MAX_EPOCHS))
    return HyperparameterTuner(
        estimator=estimator,
        objective_metric_name=OBJECTIVE_METRIC,
        objective_type="Maximize",
        metric_definitions=CNN_METRIC_DEFINITIONS,
        hyperparameter_ranges=tuning_ranges(strategy),
        max_jobs=params.tuning_max_jobs,
        max_parallel_jobs=params.tuning_max_parallel_jobs,
        base_tuning_job_name=f"{base_job_prefix}-tune",
        random_seed=params.tuning_random_seed,
        **options,
    )
