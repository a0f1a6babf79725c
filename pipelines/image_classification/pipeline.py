"""The image-classification pipeline, built with the SageMaker Python SDK v2 and no network call.

    Preprocess -> TrainCNN, TrainXGBoost -> TuneCNN -> Evaluate -> CheckAccuracy
        -> RegisterModel (if CNN accuracy >= threshold and >= the XGBoost baseline) else FailAccuracy

How it stays offline (aws/sagemaker-python-sdk #2676): the PipelineSession gets an explicit region
and default bucket, telemetry sending is patched off, job code is referenced by s3:// URIs of a
content-hashed bundle that :mod:`pipelines.staging` uploads separately, every image URI is looked
up from the SDK's bundled tables, and the model is registered without ``entry_point`` (no repack step).

How the job code is wired (see docs/jobs.md; the bundle root holds ``training/``):
- training steps: framework estimators with ``source_dir`` = the bundle's ``sourcedir.tar.gz`` URI and
  ``entry_point="training/<script>.py"``. With an s3 source_dir the SDK neither reads nor uploads local
  files and keeps the relative entry point, so the container runs ``python training/<script>.py``
  from the extracted bundle (``sagemaker_program`` = that path).
- processing steps: a plain :class:`~sagemaker.processing.Processor` whose ``code`` input is the
  bundle's unpacked ``source/`` prefix at ``/opt/ml/processing/input/code`` and whose entrypoint is
  ``python3 /opt/ml/processing/input/code/training/<script>.py``; an explicit image URI keeps the SDK
  from needing a concrete instance type (#3141/#3123), so instance types stay pipeline parameters.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

if logging.getLogger("sagemaker.config").level == logging.NOTSET:  # else it logs at import: "Not applying SDK defaults"
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)

import boto3
import botocore.session
from botocore.credentials import CredentialResolver
from sagemaker import image_uris
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
from sagemaker.inputs import TrainingInput
from sagemaker.model import Model
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.parameter import CategoricalParameter, ContinuousParameter, IntegerParameter
from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor
from sagemaker.pytorch import PyTorch
from sagemaker.tuner import HyperbandStrategyConfig, HyperparameterTuner, StrategyConfig
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.parameters import ParameterFloat, ParameterInteger, ParameterString
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.pipeline_context import PipelineSession
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.retry import (
    SageMakerJobExceptionTypeEnum,
    SageMakerJobStepRetryPolicy,
    StepExceptionTypeEnum,
    StepRetryPolicy,
)
from sagemaker.workflow.steps import CacheConfig, ProcessingStep, TrainingStep, TuningStep
from sagemaker.xgboost import XGBoost

from pipelines import staging
from training.metrics import CNN_METRIC_DEFINITIONS, OBJECTIVE_METRIC, XGBOOST_METRIC_DEFINITIONS

PYTORCH_VERSION = "2.3"
PYTORCH_PY_VERSION = "py311"
XGBOOST_VERSION = "1.7-1"
CONTAINER_CODE_DIR = "/opt/ml/processing/input/code"
EVALUATION_PATH = "/opt/ml/processing/evaluation"
CNN_ACCURACY_PATH = "multiclass_classification_metrics.accuracy.value"
BASELINE_ACCURACY_PATH = "baseline.multiclass_classification_metrics.accuracy.value"
CONTENT_TYPES = ["application/json", "application/x-npy", "image/png", "image/jpeg"]
RESPONSE_TYPES = ["application/json"]
INFERENCE_INSTANCE_TYPES = ["ml.m5.large", "ml.m5.xlarge", "ml.c5.xlarge"]
TRANSFORM_INSTANCE_TYPES = ["ml.m5.large", "ml.m5.xlarge"]

# Which CNN the pipeline evaluates and registers: "TrainCNN" (the final training run) or "TuneCNN"
# (the tuner's best training job). The one place that choice is made; see _cnn_model_data().
# TrainCNN is the default: the trials train on TUNING_TRAIN_FRACTION of the data for 2-3 epochs (cheap enough to
# run several inside the time target), so the best trial's model is a good *ranking* of hyperparameters but a
# weak model; TrainCNN trains once on all the data for CnnEpochs with the best trial's lr and batch size
# (TUNED_FINAL_HYPERPARAMETERS, read from TuneCNN's BestTrainingJob.TunedHyperParameters).
REGISTERED_MODEL_SOURCE = "TrainCNN"
# Hyperparameters TrainCNN takes from the tuner's best trial. The tuned epoch count is not among them: it is a
# budget on the subset, not a count for the full data (CnnEpochs is). Nor is the architecture: on 30% of the data
# for 2-3 epochs the BatchNorm-free keras net can win a trial, but trained on everything for 15 epochs it reached
# 99.34% where the compact net reached 99.42-99.43% (full-MNIST runs); the trials still compare architectures, and
# the final one is the CnnArchitecture parameter (default compact).
TUNED_FINAL_HYPERPARAMETERS = ("lr", "batch-size")

# Tuning: trials see a stratified 30% of the training split (the dog-breed reference tuned on 30%).
TUNING_TRAIN_FRACTION = 0.3
TUNING_STRATEGIES = ("Bayesian", "Random", "Grid", "Hyperband")
# Bayesian and Random search the same ranges, so the choice between them is a pipeline parameter. Grid (every
# range categorical) and Hyperband (epochs become the resource, StrategyConfig, no TrainingJobEarlyStoppingType)
# change the shape of the tuning job, which a parameter cannot do: choose them when building the definition,
# get_pipeline(tuning_strategy=...) or MLOPS_TUNING_STRATEGY.
TUNING_STRATEGY_ENV = "MLOPS_TUNING_STRATEGY"
HYPERBAND_MAX_EPOCHS = 4

# Debugger: what the hook saves (every DEBUG_SAVE_INTERVAL train steps; losses every LOSS_SAVE_INTERVAL and every
# evaluation) and the built-in rules run against it. StopTraining is attached to the rule that means the run is
# broken; Overfit, Overtraining, PoorWeightInitialization and LossNotDecreasing only report. LossNotDecreasing
# compares single-batch losses num_steps apart: with augmentation and a one-cycle warm-up that is noisy, and on a
# full-MNIST run it stopped a healthy job at step 120 (0.67 vs 0.45) that goes on to 99.4%. PyTorch's default
# initialisation of the BatchNorm-free keras net is flagged by the variance test, and still trains well.
DEBUG_SAVE_INTERVAL = 50
LOSS_SAVE_INTERVAL = 10
STOPPING_RULES = ("VanishingGradient",)
POOR_INIT_STEPS = 10  # PoorWeightInitialization's documented `steps`
# Profiler: system metrics every 500 ms; framework profiling (torch.profiler) for a window of training steps.
PROFILER_INTERVAL_MS = 500
PROFILE_START_STEP = 5
PROFILE_NUM_STEPS = 10


@dataclass(frozen=True)
class StepNames:
    preprocess: str = "Preprocess"
    train_cnn: str = "TrainCNN"
    train_xgboost: str = "TrainXGBoost"
    tune_cnn: str = "TuneCNN"
    evaluate: str = "Evaluate"
    condition: str = "CheckAccuracy"
    register: str = "Register"  # ModelStep names its RegisterModel step "Register-RegisterModel"
    fail: str = "FailAccuracy"


STEPS = StepNames()


def disable_telemetry() -> None:
    """The SDK sends a GET to S3 after many calls; building a definition must make no network call."""
    from sagemaker.telemetry import telemetry_logging

    telemetry_logging._send_telemetry_request = lambda *args, **kwargs: None


def offline_boto_session(region: str) -> boto3.Session:
    """A boto3 session with no credential providers: creating clients looks nothing up (no
    instance-metadata call), and an accidental AWS call while building fails instead of reaching out."""
    core = botocore.session.get_session()
    core.register_component("credential_provider", CredentialResolver(providers=[]))
    return boto3.Session(botocore_session=core, region_name=region)


@contextlib.contextmanager
def _offline_default_session(boto_session: boto3.Session) -> Iterator[None]:
    """Estimators create a ``boto3.client`` from the default session (TensorBoardApp); point it offline."""
    previous = boto3.DEFAULT_SESSION
    boto3.DEFAULT_SESSION = boto_session
    try:
        yield
    finally:
        boto3.DEFAULT_SESSION = previous


@contextlib.contextmanager
def quiet_sdk() -> Iterator[None]:
    """The SDK logs a dozen expected notes per build (job names popped, no wait in a PipelineSession).

    Step arguments are computed lazily, so wrap ``pipeline.definition()`` in this too.
    """
    loggers = [logging.getLogger(name) for name in ("sagemaker", "sagemaker.config")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Running within a PipelineSession")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def get_session(region: str, default_bucket: str) -> PipelineSession:
    """A PipelineSession that never needs credentials: explicit region and bucket, nothing resolved."""
    disable_telemetry()
    boto_session = offline_boto_session(region)
    session = PipelineSession(boto_session=boto_session, default_bucket=default_bucket)
    # Ignore SDK-defaults files (~/.config/sagemaker/config.yaml): the definition must not depend on
    # who builds it, and an empty config also skips a JSON-schema validation on every lookup (slow).
    session.sagemaker_config = {}
    session._default_bucket = default_bucket  # skip the create-bucket call default_bucket() would make
    return session


def default_cache_config() -> CacheConfig:
    return CacheConfig(enable_caching=True, expire_after="P30D")


def default_retry_policies() -> list:
    """Retry throttling and capacity problems, never a failing script (that would only fail again)."""
    return [
        StepRetryPolicy(
            exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
            interval_seconds=10, backoff_rate=2.0, max_attempts=3,
        ),
        SageMakerJobStepRetryPolicy(
            exception_types=[SageMakerJobExceptionTypeEnum.CAPACITY_ERROR,
                             SageMakerJobExceptionTypeEnum.RESOURCE_LIMIT,
                             SageMakerJobExceptionTypeEnum.INTERNAL_ERROR],
            interval_seconds=30, backoff_rate=2.0, max_attempts=3,
        ),
    ]


@functools.lru_cache(maxsize=32)  # each lookup parses botocore's endpoint tables (~0.1 s); TrainCNN and the trials share one
def pytorch_image(region: str, scope: str, instance_type: str = "ml.m5.xlarge") -> str:
    return image_uris.retrieve("pytorch", region, version=PYTORCH_VERSION, py_version=PYTORCH_PY_VERSION,
                               instance_type=instance_type, image_scope=scope)


def xgboost_image(region: str) -> str:
    return image_uris.retrieve("xgboost", region, version=XGBOOST_VERSION, image_scope="training")


@dataclass
class Parameters:
    """Every value a user may change per execution without editing code."""

    input_data: ParameterString
    processing_instance_type: ParameterString
    processing_instance_count: ParameterInteger
    training_instance_type: ParameterString
    training_instance_count: ParameterInteger
    max_train_samples: ParameterInteger
    max_test_samples: ParameterInteger
    cnn_epochs: ParameterInteger
    xgboost_num_round: ParameterInteger
    tuning_max_jobs: ParameterInteger
    tuning_max_parallel_jobs: ParameterInteger
    accuracy_threshold: ParameterFloat
    model_approval_status: ParameterString
    # Declared only when the definition uses them: the CNN's own hyperparameters when TrainCNN does not take the
    # tuner's (TUNED_FINAL_HYPERPARAMETERS), the strategy/early-stopping choice for Bayesian and Random tuning.
    cnn_batch_size: ParameterInteger | None = None
    cnn_learning_rate: ParameterFloat | None = None
    cnn_architecture: ParameterString | None = None
    tuning_strategy: ParameterString | None = None
    tuning_early_stopping: ParameterString | None = None

    def as_list(self) -> list:
        return [value for value in vars(self).values() if value is not None]


def make_parameters(default_bucket: str, input_prefix: str = "data/mnist", *, tuning_strategy: str = "Bayesian",
                    tuned_final: tuple[str, ...] = TUNED_FINAL_HYPERPARAMETERS) -> Parameters:
    """Defaults suit a local full-MNIST run on 2 CPU cores; SageMaker runs override them with --param."""
    params = Parameters(
        input_data=ParameterString("InputDataUrl", default_value=f"s3://{default_bucket}/{input_prefix}/"),
        processing_instance_type=ParameterString("ProcessingInstanceType", default_value="ml.m5.large"),
        processing_instance_count=ParameterInteger("ProcessingInstanceCount", default_value=1),
        training_instance_type=ParameterString("TrainingInstanceType", default_value="ml.m5.xlarge"),
        training_instance_count=ParameterInteger("TrainingInstanceCount", default_value=1),
        max_train_samples=ParameterInteger("MaxTrainSamples", default_value=0),
        max_test_samples=ParameterInteger("MaxTestSamples", default_value=0),
        cnn_epochs=ParameterInteger("CnnEpochs", default_value=15),
        xgboost_num_round=ParameterInteger("XGBoostNumRound", default_value=300),
        tuning_max_jobs=ParameterInteger("TuningMaxJobs", default_value=4),
        tuning_max_parallel_jobs=ParameterInteger("TuningMaxParallelJobs", default_value=2),
        accuracy_threshold=ParameterFloat("AccuracyThreshold", default_value=0.99),
        model_approval_status=ParameterString(
            "ModelApprovalStatus", default_value="PendingManualApproval",
            enum_values=["PendingManualApproval", "Approved", "Rejected"],
        ),
    )
    if "batch-size" not in tuned_final:
        params.cnn_batch_size = ParameterInteger("CnnBatchSize", default_value=128)
    if "lr" not in tuned_final:
        params.cnn_learning_rate = ParameterFloat("CnnLearningRate", default_value=0.05)
    if "architecture" not in tuned_final:
        params.cnn_architecture = ParameterString("CnnArchitecture", default_value="compact",
                                                  enum_values=["compact", "keras"])
    if tuning_strategy in ("Bayesian", "Random"):
        params.tuning_strategy = ParameterString("TuningStrategy", default_value=tuning_strategy,
                                                 enum_values=["Bayesian", "Random"])
        params.tuning_early_stopping = ParameterString("TuningEarlyStoppingType", default_value="Auto",
                                                       enum_values=["Auto", "Off"])
    return params


def _processor(role: str, image_uri: str, script: str, params: Parameters, session: PipelineSession,
               base_job_name: str) -> Processor:
    return Processor(
        role=role,
        image_uri=image_uri,
        entrypoint=["python3", f"{CONTAINER_CODE_DIR}/training/{script}"],
        instance_type=params.processing_instance_type,
        instance_count=params.processing_instance_count,
        base_job_name=base_job_name,
        sagemaker_session=session,
        env={"PYTHONUNBUFFERED": "1"},
    )


def _code_input(code: staging.StagedCode) -> ProcessingInput:
    return ProcessingInput(source=code.source_uri, destination=CONTAINER_CODE_DIR, input_name="code")


def _cnn_model_data(train_step: TrainingStep, tune_step: TuningStep, bucket: str, model_prefix: str):
    """The CNN artifact that Evaluate scores and RegisterModel registers (see REGISTERED_MODEL_SOURCE)."""
    if REGISTERED_MODEL_SOURCE == STEPS.train_cnn:
        return train_step.properties.ModelArtifacts.S3ModelArtifacts
    if REGISTERED_MODEL_SOURCE == STEPS.tune_cnn:
        return tune_step.get_top_model_s3_uri(top_k=0, s3_bucket=bucket, prefix=model_prefix)
    raise ValueError(f"REGISTERED_MODEL_SOURCE={REGISTERED_MODEL_SOURCE!r}: expected TrainCNN or TuneCNN")


class _DebuggedPyTorch(PyTorch):
    """The SDK gathers DebugHookConfig's collections in a set, whose order changes with PYTHONHASHSEED; sort them
    so the same settings always give the same definition (cache keys, snapshot)."""

    def _prepare_collection_configs(self) -> None:
        super()._prepare_collection_configs()
        self.collection_configs = sorted(self.collection_configs, key=lambda c: c.name)

    def _prepare_debugger_rules(self) -> list:
        """StopTraining stops the jobs whose names start with a prefix; the SDK uses the estimator's timestamped
        job name, which a pipeline never uses. Pipelines name the job ``pipelines-<execution id>-<step>-...``, so
        the prefix is built from the execution id at run time (and the definition stays the same per build)."""
        configs = super()._prepare_debugger_rules()
        for config in configs:
            parameters = config.get("RuleParameters") or {}
            if "action_json" in parameters:
                marker = "PREFIXMARKER"
                actions = rule_configs.ActionList(rule_configs.StopTraining(marker)).serialize()
                before, after = actions.split(marker)
                parameters["action_json"] = Join(on="", values=[
                    before + "pipelines-", ExecutionVariables.PIPELINE_EXECUTION_ID, f"-{STEPS.train_cnn}" + after])
        return configs


def debugger_rules() -> list:
    """The built-in rules on TrainCNN; StopTraining on the ones that mean the run is broken."""
    rules = []
    for config in (rule_configs.vanishing_gradient(), rule_configs.overfit(), rule_configs.overtraining(),
                   rule_configs.poor_weight_initialization(), rule_configs.loss_not_decreasing()):
        name = config["DebugRuleConfiguration"]["RuleConfigurationName"]
        actions = rule_configs.ActionList(rule_configs.StopTraining()) if name in STOPPING_RULES else None
        rule = Rule.sagemaker(config, actions=actions)
        # The hook config below saves what every rule reads, at our intervals; the rules' own defaults (every
        # 500 steps) would add a second entry per collection name to DebugHookConfig.
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
    return ProfilerConfig(
        s3_output_path=s3_output_path,
        system_monitor_interval_millis=PROFILER_INTERVAL_MS,
        framework_profile_params=FrameworkProfile(
            detailed_profiling_config=DetailedProfilingConfig(start_step=start_step, num_steps=num_steps),
            dataloader_profiling_config=DataloaderProfilingConfig(start_step=start_step, num_steps=num_steps),
        ),
    )


def _cnn_estimator(code: staging.StagedCode, region: str, role: str, params: Parameters, session: PipelineSession,
                   artifacts: str, base_job_prefix: str, *, name: str, output: str, debug: str | None,
                   hyperparameters: dict) -> PyTorch:
    """PyTorch script mode from the staged bundle; ``debug`` = where Debugger/Profiler output goes (None: off)."""
    options: dict = {"disable_profiler": True, "debugger_hook_config": False}
    if debug:
        options = {"debugger_hook_config": debugger_hook_config(debug), "rules": debugger_rules(),
                   "profiler_config": profiler_config(f"{debug}/profiler")}
    return (_DebuggedPyTorch if debug else PyTorch)(
        entry_point="training/train_cnn.py",
        source_dir=code.tarball_uri,
        framework_version=PYTORCH_VERSION,
        py_version=PYTORCH_PY_VERSION,
        image_uri=pytorch_image(region, "training"),
        role=role,
        instance_type=params.training_instance_type,
        instance_count=params.training_instance_count,
        output_path=f"{artifacts}/{output}",
        base_job_name=f"{base_job_prefix}-{name}",
        sagemaker_session=session,
        metric_definitions=CNN_METRIC_DEFINITIONS,
        hyperparameters=hyperparameters,
        enable_sagemaker_metrics=True,
        **options,
    )


def tuning_ranges(strategy: str) -> dict:
    """What the tuner searches: learning rate (log), batch size, epochs and the architecture.

    Grid takes categorical ranges only; Hyperband owns the epochs (its resource), so it does not search them.
    """
    if strategy == "Grid":
        return {"lr": CategoricalParameter([0.02, 0.05]), "batch-size": CategoricalParameter([64, 256]),
                "epochs": CategoricalParameter([2]), "architecture": CategoricalParameter(["compact", "keras"])}
    ranges = {
        # train_cnn's default optimizer is SGD (nesterov, one-cycle) with lr 0.05: search a decade around it.
        "lr": ContinuousParameter(0.015, 0.15, scaling_type="Logarithmic"),
        "batch-size": CategoricalParameter([64, 128, 256]),
        "epochs": IntegerParameter(2, 3),
        "architecture": CategoricalParameter(["compact", "keras"]),
    }
    if strategy == "Hyperband":
        del ranges["epochs"]
    return ranges


def _tuner(estimator: PyTorch, params: Parameters, strategy: str, base_job_prefix: str) -> HyperparameterTuner:
    options: dict = {"strategy": strategy}
    if params.tuning_strategy is not None:
        options = {"strategy": params.tuning_strategy, "early_stopping_type": params.tuning_early_stopping}
    elif strategy == "Hyperband":
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
        **options,
    )


def get_pipeline(
    region: str = "us-east-1",
    role: str | None = None,
    default_bucket: str | None = None,
    pipeline_name: str = "image-classification",
    model_package_group_name: str = "image-classification",
    base_job_prefix: str = "image-classification",
    *,
    cache_config: CacheConfig | None = None,
    retry_policies: list | None = None,
    bundle: staging.SourceBundle | None = None,
    tuning_strategy: str | None = None,
) -> Pipeline:
    """Build the Pipeline object; no network call is made (stage the code with :mod:`pipelines.staging`).

    ``cache_config``/``retry_policies`` apply to every job step (defaults: 30-day cache, retries on
    throttling and capacity errors); pass ``CacheConfig(enable_caching=False)`` or ``[]`` to turn them off.
    ``tuning_strategy`` is one of TUNING_STRATEGIES (default: $MLOPS_TUNING_STRATEGY, else Bayesian).
    """
    tuning_strategy = tuning_strategy or os.environ.get(TUNING_STRATEGY_ENV) or "Bayesian"
    if tuning_strategy not in TUNING_STRATEGIES:
        raise ValueError(f"tuning_strategy={tuning_strategy!r} ({TUNING_STRATEGY_ENV}): expected one of "
                         f"{', '.join(TUNING_STRATEGIES)}")
    if not role:
        raise ValueError("role is required: an IAM role ARN SageMaker jobs run as (MLOPS_ROLE_ARN)")
    if not default_bucket:
        raise ValueError("default_bucket is required: the S3 bucket for code, data and artifacts (MLOPS_BUCKET)")
    with quiet_sdk():
        session = get_session(region, default_bucket)
    with _offline_default_session(session.boto_session), quiet_sdk():
        return _build(region, role, default_bucket, pipeline_name, model_package_group_name, base_job_prefix,
                      session, cache_config, retry_policies, bundle, tuning_strategy)


def _build(region: str, role: str, default_bucket: str, pipeline_name: str, model_package_group_name: str,
           base_job_prefix: str, session: PipelineSession, cache_config: CacheConfig | None,
           retry_policies: list | None, bundle: staging.SourceBundle | None, tuning_strategy: str) -> Pipeline:
    cache_config = cache_config if cache_config is not None else default_cache_config()
    retry_policies = list(retry_policies) if retry_policies is not None else default_retry_policies()
    bundle = bundle or staging.collect_bundle()
    code = staging.code_location(default_bucket, pipeline_name, bundle)
    params = make_parameters(default_bucket, tuning_strategy=tuning_strategy)
    artifacts = f"s3://{default_bucket}/{pipeline_name}"
    job_options = {"cache_config": cache_config, "retry_policies": retry_policies}

    processing_image = pytorch_image(region, "training")

    # Preprocess: raw IDX files -> normalized train/validation/test splits.
    preprocess = _processor(role, processing_image, "preprocess.py", params, session, f"{base_job_prefix}-preprocess")
    step_preprocess = ProcessingStep(
        name=STEPS.preprocess,
        step_args=preprocess.run(
            inputs=[
                _code_input(code),
                ProcessingInput(source=params.input_data, destination="/opt/ml/processing/input/raw",
                                input_name="raw"),
            ],
            outputs=[
                ProcessingOutput(output_name=split, source=f"/opt/ml/processing/output/{split}")
                for split in ("train", "validation", "test")
            ],
            arguments=[
                "--input-dir", "/opt/ml/processing/input/raw",
                "--output-dir", "/opt/ml/processing/output",
                "--max-train-samples", params.max_train_samples.to_string(),
                "--max-test-samples", params.max_test_samples.to_string(),
            ],
        ),
        **job_options,
    )
    split_outputs = step_preprocess.properties.ProcessingOutputConfig.Outputs
    channels = {
        split: TrainingInput(s3_data=split_outputs[split].S3Output.S3Uri) for split in ("train", "validation")
    }

    # TrainXGBoost: the baseline, XGBoost script mode from the same bundle.
    xgb = XGBoost(
        entry_point="training/train_xgboost.py",
        source_dir=code.tarball_uri,
        framework_version=XGBOOST_VERSION,
        image_uri=xgboost_image(region),
        role=role,
        instance_type=params.training_instance_type,
        instance_count=params.training_instance_count,
        output_path=f"{artifacts}/models/xgboost",
        base_job_name=f"{base_job_prefix}-xgboost",
        sagemaker_session=session,
        metric_definitions=XGBOOST_METRIC_DEFINITIONS,
        hyperparameters={"num-round": params.xgboost_num_round},
        disable_profiler=True,
        debugger_hook_config=False,
    )
    step_train_xgb = TrainingStep(name=STEPS.train_xgboost, step_args=xgb.fit(inputs=channels), **job_options)

    # TuneCNN: search the CNN's hyperparameters on a subset (trials carry no Debugger/Profiler: tuning jobs
    # cannot run rules, and the trials must stay cheap).
    trial_estimator = _cnn_estimator(code, region, role, params, session, artifacts, base_job_prefix,
                                     name="cnn-trial", output="models/tuning", debug=None,
                                     hyperparameters={"train-fraction": TUNING_TRAIN_FRACTION})
    tuner = _tuner(trial_estimator, params, tuning_strategy, base_job_prefix)
    step_tune = TuningStep(name=STEPS.tune_cnn, step_args=tuner.fit(inputs=channels), **job_options)

    # TrainCNN: the final training on all the data, with the best trial's hyperparameters (see
    # TUNED_FINAL_HYPERPARAMETERS), the Debugger hook + rules and the Profiler.
    best = step_tune.properties.BestTrainingJob.TunedHyperParameters
    final_hyperparameters = {
        "epochs": params.cnn_epochs,
        "batch-size": best["batch-size"] if "batch-size" in TUNED_FINAL_HYPERPARAMETERS else params.cnn_batch_size,
        "lr": best["lr"] if "lr" in TUNED_FINAL_HYPERPARAMETERS else params.cnn_learning_rate,
        "architecture": (best["architecture"] if "architecture" in TUNED_FINAL_HYPERPARAMETERS
                         else params.cnn_architecture),
    }
    cnn = _cnn_estimator(code, region, role, params, session, artifacts, base_job_prefix, name="cnn",
                         output="models/cnn", debug=f"{artifacts}/debug", hyperparameters=final_hyperparameters)
    step_train_cnn = TrainingStep(name=STEPS.train_cnn, step_args=cnn.fit(inputs=channels), **job_options)

    # Evaluate: CNN vs the XGBoost baseline on the test split -> evaluation.json (a PropertyFile).
    cnn_model_data = _cnn_model_data(step_train_cnn, step_tune, default_bucket, f"{pipeline_name}/models/tuning")
    evaluation_report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
    evaluator = _processor(role, processing_image, "evaluate.py", params, session, f"{base_job_prefix}-evaluate")
    step_evaluate = ProcessingStep(
        name=STEPS.evaluate,
        step_args=evaluator.run(
            inputs=[
                _code_input(code),
                ProcessingInput(source=cnn_model_data, destination="/opt/ml/processing/model/cnn",
                                input_name="cnn-model"),
                ProcessingInput(source=step_train_xgb.properties.ModelArtifacts.S3ModelArtifacts,
                                destination="/opt/ml/processing/model/xgboost", input_name="xgboost-model"),
                ProcessingInput(source=split_outputs["test"].S3Output.S3Uri, destination="/opt/ml/processing/test",
                                input_name="test"),
            ],
            outputs=[ProcessingOutput(output_name="evaluation", source=EVALUATION_PATH)],
            arguments=[
                "--cnn-model-dir", "/opt/ml/processing/model/cnn",
                "--xgboost-model-dir", "/opt/ml/processing/model/xgboost",
                "--test-dir", "/opt/ml/processing/test",
                "--output-dir", EVALUATION_PATH,
            ],
        ),
        property_files=[evaluation_report],
        **job_options,
    )

    # RegisterModel: the CNN in the Model Registry with its metrics, served by the PyTorch image.
    evaluation_uri = step_evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri
    model_metrics = ModelMetrics(
        model_statistics=MetricsSource(
            content_type="application/json",
            s3_uri=Join(on="/", values=[evaluation_uri, "evaluation.json"]),
        )
    )
    model = Model(
        image_uri=pytorch_image(region, "inference", instance_type="ml.m5.large"),
        model_data=cnn_model_data,
        role=role,
        sagemaker_session=session,
        env={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"},
    )
    step_register = ModelStep(
        name=STEPS.register,
        step_args=model.register(
            content_types=CONTENT_TYPES,
            response_types=RESPONSE_TYPES,
            inference_instances=INFERENCE_INSTANCE_TYPES,
            transform_instances=TRANSFORM_INSTANCE_TYPES,
            model_package_group_name=model_package_group_name,
            approval_status=params.model_approval_status,
            model_metrics=model_metrics,
            description="CNN image classifier trained and evaluated by the image-classification pipeline",
        ),
        retry_policies=[p for p in retry_policies if isinstance(p, StepRetryPolicy)],
    )

    cnn_accuracy = JsonGet(step_name=STEPS.evaluate, property_file=evaluation_report, json_path=CNN_ACCURACY_PATH)
    baseline_accuracy = JsonGet(step_name=STEPS.evaluate, property_file=evaluation_report,
                                json_path=BASELINE_ACCURACY_PATH)
    step_fail = FailStep(
        name=STEPS.fail,
        error_message=Join(on=" ", values=[
            "CNN accuracy", cnn_accuracy, "must be >= the threshold", params.accuracy_threshold,
            "and >= the XGBoost baseline accuracy", baseline_accuracy, "; the model was not registered",
        ]),
    )
    step_condition = ConditionStep(
        name=STEPS.condition,
        conditions=[
            ConditionGreaterThanOrEqualTo(left=cnn_accuracy, right=params.accuracy_threshold),
            ConditionGreaterThanOrEqualTo(left=cnn_accuracy, right=baseline_accuracy),
        ],
        if_steps=[step_register],
        else_steps=[step_fail],
    )

    return Pipeline(
        name=pipeline_name,
        parameters=params.as_list(),
        steps=[step_preprocess, step_tune, step_train_cnn, step_train_xgb, step_evaluate, step_condition],
        sagemaker_session=session,
    )
