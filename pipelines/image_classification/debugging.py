"""Debugger and Profiler on TrainCNN: the hook's collections, the five built-in rules and the profiler config.

The hook saves what every rule reads at our intervals; StopTraining is attached only to the rules that mean
the run is broken (docs/decisions.md says why the others only report).
"""

from __future__ import annotations

from sagemaker.debugger import (
    CollectionConfig,
    DataloaderProfilingConfig,
    DebuggerHookConfig,
    DetailedProfilingConfig,
    FrameworkProfile,
    ProfilerConfig,
    Rule,
    rule_configs,
)
from sagemaker.pytorch import PyTorch
from sagemaker.tensorflow import TensorFlow

DEBUG_SAVE_INTERVAL = 50
LOSS_SAVE_INTERVAL = 10
STOPPING_RULES = ("VanishingGradient",)
STOP_TRAINING_PREFIX = "pipelines-"
POOR_INIT_STEPS = 10  # PoorWeightInitialization's documented `steps`
PROFILER_INTERVAL_MS = 500
PROFILE_START_STEP = 5
PROFILE_NUM_STEPS = 10


class _StableDebugger:
    """Mixed into a framework estimator: its Debugger settings give the same definition on every build, and whose
    StopTraining actions name the jobs a pipeline really starts."""

    def _prepare_collection_configs(self) -> None:
        """The SDK gathers the collections in a set, whose order changes with PYTHONHASHSEED."""
        super()._prepare_collection_configs()
        self.collection_configs = sorted(self.collection_configs, key=lambda c: c.name)

    def _prepare_debugger_rules(self) -> list:
        """StopTraining stops the job whose name starts with a prefix. The SDK uses the estimator's timestamped
        job name, which a pipeline never uses: pipeline jobs are named ``pipelines-<execution id>-<Step>-...``.
        smdebug lower-cases the whole action before matching names case-sensitively, so the prefix must be
        lower-case, and it must be static, or every execution's rule configuration (part of SageMaker's cache
        key) would differ. ``pipelines-`` is both; smdebug stops the match only when it is the one InProgress
        training job with that prefix (docs/decisions.md)."""
        configs = super()._prepare_debugger_rules()
        for config in configs:
            parameters = config.get("RuleParameters") or {}
            if "action_json" in parameters:
                parameters["action_json"] = rule_configs.ActionList(
                    rule_configs.StopTraining(STOP_TRAINING_PREFIX)).serialize()
        return configs


class DebuggedPyTorch(_StableDebugger, PyTorch):
    """A PyTorch estimator with stable Debugger settings and pipeline-aware StopTraining actions."""


class DebuggedTensorFlow(_StableDebugger, TensorFlow):
    """The same for the TensorFlow estimator (train_keras.py's Keras callback saves what the rules read)."""


# LossNotDecreasing reads validation losses only. Without a mode it falls back to TRAIN until the first validation
# exists, and compares single-batch losses num_steps apart: during a one-cycle warm-up with augmentation that fired
# on a healthy full run at step 20 ("2.2864 at train step 20 vs 2.2454 at step 10"). Each validation is 3 EVAL
# steps (6,000 images in batches of 2,000), so the default num_steps=10 compares validation losses ~4 epochs apart.
# Overfit compares each validation loss with the mean training loss since the previous validation (documented
# defaults: ratio_threshold 0.1, patience 1). At the one-cycle peak the validation loss of a healthy run jumps
# above the augmented training loss for single epochs (ratios 0.19, 0.29, 0.16, 0.21 at epochs 3, 6, 8 and 10 of a
# healthy 99.51% run, never two in a row); overfitting persists, so three validations in a row must agree.
RULE_PARAMETERS: dict[str, dict[str, str]] = {"LossNotDecreasing": {"mode": "EVAL"}, "Overfit": {"patience": "3"}}


def debugger_rules() -> list:
    """The built-in rules on TrainCNN; StopTraining on the ones that mean the run is broken."""
    rules = []
    for config in (rule_configs.vanishing_gradient(), rule_configs.overfit(), rule_configs.overtraining(),
                   rule_configs.poor_weight_initialization(), rule_configs.loss_not_decreasing()):
        name = config["DebugRuleConfiguration"]["RuleConfigurationName"]
        actions = rule_configs.ActionList(rule_configs.StopTraining()) if name in STOPPING_RULES else None
        rule = Rule.sagemaker(config, actions=actions, rule_parameters=RULE_PARAMETERS.get(name))
        # debugger_hook_config saves what every rule reads; the rules' own defaults (every 500 steps) would add a
        # second entry per collection name to DebugHookConfig.
        rule.collection_configs = []
        rules.append(rule)
    return rules


def debugger_hook_config(s3_output_path: str) -> DebuggerHookConfig:
    """What the smdebug hook in train_cnn.py saves: the collections the rules read, and ReLU outputs."""
    every = {"save_interval": str(DEBUG_SAVE_INTERVAL)}
    return DebuggerHookConfig(
        s3_output_path=s3_output_path,
        hook_parameters=every,
        collection_configs=[
            CollectionConfig("losses", parameters={"train.save_interval": str(LOSS_SAVE_INTERVAL),
                                                   "eval.save_interval": "1"}),
            CollectionConfig("gradients", parameters=every),
            CollectionConfig("weights", parameters=every),
            CollectionConfig("biases", parameters=every),
            CollectionConfig("relu_output", parameters={"include_regex": ".*relu_output", **every,
                                                        "reductions": "mean,variance,min,max"}),
            # PoorWeightInitialization looks at the first steps' activation inputs only.
            CollectionConfig("relu_input", parameters={"include_regex": ".*relu_input", "save_interval": "1",
                                                       "end_step": str(POOR_INIT_STEPS),
                                                       "reductions": "mean,variance,min,max"}),
        ],
    )


def profiler_config(s3_output_path: str, start_step: int = PROFILE_START_STEP,
                    num_steps: int = PROFILE_NUM_STEPS) -> ProfilerConfig:
    """System metrics every PROFILER_INTERVAL_MS; framework profiling for a window of training steps."""
    return ProfilerConfig(
        s3_output_path=s3_output_path,
        system_monitor_interval_millis=PROFILER_INTERVAL_MS,
        framework_profile_params=FrameworkProfile(
            detailed_profiling_config=DetailedProfilingConfig(start_step=start_step, num_steps=num_steps),
            dataloader_profiling_config=DataloaderProfilingConfig(start_step=start_step, num_steps=num_steps),
        ),
    )


def debugging_options(debug_uri: str | None) -> dict:
    """Estimator keyword arguments: Debugger hook, rules and Profiler under ``debug_uri``, or all off (None)."""
    if debug_uri is None:
        return {"disable_profiler": True, "debugger_hook_config": False}
    return {"debugger_hook_config": debugger_hook_config(debug_uri), "rules": debugger_rules(),
            "profiler_config": profiler_config(f"{debug_uri}/profiler")}
