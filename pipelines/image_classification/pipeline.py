"""The image-classification pipeline, built with the SageMaker Python SDK v2 and no network call.

    Preprocess -> TuneCNN -> TrainCNN, and TrainXGBoost -> EvaluateBaseline beside it -> Evaluate -> CheckAccuracy
        -> Register (if CNN accuracy >= threshold and >= the XGBoost baseline) else FailAccuracy

How the job code is wired (docs/jobs.md): every step runs code from one content-hashed source bundle
(:mod:`pipelines.source_bundle`, holding ``training/`` and ``inference/``), named by s3:// URIs, so the
definition builds offline and changes exactly when that code changes.
- training steps: framework estimators with ``source_dir`` = the bundle's ``sourcedir.tar.gz`` and
  ``entry_point="training/<script>.py"``. With an s3 source_dir the SDK neither reads nor uploads local files;
  the container runs the program from the extracted bundle.
- processing steps: a plain :class:`~sagemaker.processing.Processor` whose ``code`` input is the bundle's
  unpacked ``source/`` prefix at ``/opt/ml/processing/input/code``; an explicit image URI keeps the SDK from
  needing a concrete instance type (#3141/#3123), so instance types stay pipeline parameters.
- registration: the model is registered without ``entry_point`` (no repack step); model.tar.gz carries its
  own ``code/inference.py``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from sagemaker import image_uris
from sagemaker.estimator import EstimatorBase
from sagemaker.inputs import TrainingInput
from sagemaker.model import Model
from sagemaker.model_metrics import MetricsSource, ModelMetrics
from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor
from sagemaker.pytorch import PyTorch
from sagemaker.tensorflow import TensorFlow, TensorFlowModel
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionGreaterThanOrEqualTo
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.model_step import ModelStep
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

from pipelines.image_classification.debugging import DebuggedPyTorch, DebuggedTensorFlow, debugging_options
from pipelines.image_classification.parameters import Parameters, make_parameters
from pipelines.image_classification.session import get_session, offline_default_session, quiet_sdk
from pipelines.image_classification.tuning import TUNED_FINAL_HYPERPARAMETERS, TUNING_TRAIN_FRACTION, make_tuner
from pipelines.source_bundle import SourceBundle, StagedCode, code_location, collect_bundle
from training.metrics import CNN_METRIC_DEFINITIONS, XGBOOST_METRIC_DEFINITIONS

PYTORCH_VERSION = "2.3"
PYTORCH_PY_VERSION = "py311"
# The newest TensorFlow in the SDK's image table (image_uri_config/tensorflow.json): training 2.19.0 (py312) and
# TensorFlow Serving inference 2.19.0, both with CPU images.
TENSORFLOW_VERSION = "2.19"
TENSORFLOW_PY_VERSION = "py312"
FRAMEWORKS = ("pytorch", "tensorflow")
CNN_PROGRAMS = {"pytorch": "training/train_cnn.py", "tensorflow": "training/train_keras.py"}
# The TensorFlow image's launcher requires a model_dir hyperparameter in tuning jobs; a container path keeps it
# static (the SDK's default names an S3 prefix with the build's job name: a cache miss on every build). The
# script writes to SM_MODEL_DIR, which this is.
TENSORFLOW_MODEL_DIR = "/opt/ml/model"
XGBOOST_VERSION = "1.7-1"
CONTAINER_CODE_DIR = "/opt/ml/processing/input/code"
EVALUATION_PATH = "/opt/ml/processing/evaluation"
CNN_ACCURACY_PATH = "multiclass_classification_metrics.accuracy.value"
BASELINE_ACCURACY_PATH = "baseline.multiclass_classification_metrics.accuracy.value"
CONTENT_TYPES = ["application/json", "application/x-npy", "image/png", "image/jpeg"]
RESPONSE_TYPES = ["application/json"]
INFERENCE_INSTANCE_TYPES = ["ml.m5.large", "ml.m5.xlarge", "ml.c5.xlarge"]
TRANSFORM_INSTANCE_TYPES = ["ml.m5.large", "ml.m5.xlarge"]
MODEL_SOURCES = ("TrainCNN", "TuneCNN")
XGBOOST_PROGRAM = "training.train_xgboost"  # which CNN Evaluate scores and Register registers


@dataclass(frozen=True)
class StepNames:
    preprocess: str = "Preprocess"
    train_cnn: str = "TrainCNN"
    train_xgboost: str = "TrainXGBoost"
    tune_cnn: str = "TuneCNN"
    evaluate_baseline: str = "EvaluateBaseline"
    evaluate: str = "Evaluate"
    condition: str = "CheckAccuracy"
    register: str = "Register"  # ModelStep names its RegisterModel step "Register-RegisterModel"
    fail: str = "FailAccuracy"


STEPS = StepNames()


@dataclass(frozen=True)
class Build:
    """What every step of one build needs."""

    region: str
    role: str
    session: PipelineSession
    code: StagedCode
    params: Parameters
    artifacts: str  # s3://bucket/pipeline-name
    base_job_prefix: str
    framework: str = "pytorch"


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


@functools.lru_cache(maxsize=32)  # each lookup parses botocore's endpoint tables (~0.1 s)
def pytorch_image(region: str, scope: str, instance_type: str = "ml.m5.xlarge") -> str:
    return image_uris.retrieve("pytorch", region, version=PYTORCH_VERSION, py_version=PYTORCH_PY_VERSION,
                               instance_type=instance_type, image_scope=scope)


@functools.lru_cache(maxsize=32)
def tensorflow_image(region: str, scope: str, instance_type: str = "ml.m5.xlarge") -> str:
    return image_uris.retrieve("tensorflow", region, version=TENSORFLOW_VERSION,
                               py_version=TENSORFLOW_PY_VERSION if scope == "training" else None,
                               instance_type=instance_type, image_scope=scope)


def framework_image(framework: str, region: str, scope: str, instance_type: str = "ml.m5.xlarge") -> str:
    """The CNN framework's image: training (also Preprocess and Evaluate) or inference (the registered model)."""
    return (tensorflow_image if framework == "tensorflow" else pytorch_image)(region, scope, instance_type)


def xgboost_image(region: str) -> str:
    return image_uris.retrieve("xgboost", region, version=XGBOOST_VERSION, image_scope="training")


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
    bundle: SourceBundle | None = None,
    tuning_strategy: str = "Bayesian",
    registered_model_source: str = "TrainCNN",
    framework: str = "pytorch",
) -> Pipeline:
    """Build the Pipeline object; no network call is made (``mlops.staging`` uploads the code).

    ``cache_config``/``retry_policies`` apply to every job step (defaults: 30-day cache, retries on throttling
    and capacity errors); pass ``CacheConfig(enable_caching=False)`` or ``[]`` to turn them off.
    ``tuning_strategy`` (Bayesian, Random, Grid or Hyperband) shapes the tuning job; ``registered_model_source``
    picks the CNN that is evaluated and registered: TrainCNN's (default) or the tuner's best trial.
    ``framework`` is the CNN's: ``pytorch`` (train_cnn.py in the PyTorch image, served by the PyTorch inference
    image) or ``tensorflow`` (train_keras.py in the TensorFlow image, script mode, registered as a TensorFlow
    Serving model); Preprocess and Evaluate run in that framework's training image.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r}: expected one of {', '.join(FRAMEWORKS)}")
    if not role:
        raise ValueError("role is required: an IAM role ARN SageMaker jobs run as (MLOPS_ROLE_ARN)")
    if not default_bucket:
        raise ValueError("default_bucket is required: the S3 bucket for code, data and artifacts (MLOPS_BUCKET)")
    if registered_model_source not in MODEL_SOURCES:
        raise ValueError(f"registered_model_source={registered_model_source!r}: expected one of "
                         f"{', '.join(MODEL_SOURCES)}")
    build = make_build(region, role, default_bucket, pipeline_name, base_job_prefix, bundle, tuning_strategy,
                       framework=framework)
    session = build.session
    cache_config = cache_config if cache_config is not None else default_cache_config()
    retry_policies = list(retry_policies) if retry_policies is not None else default_retry_policies()
    job_options = {"cache_config": cache_config, "retry_policies": retry_policies}
    params = build.params

    with offline_default_session(session.boto_session), quiet_sdk():
        # Preprocess: raw images -> normalized train/validation/test splits.
        step_preprocess = preprocess_step(build, job_options)
        splits = step_preprocess.properties.ProcessingOutputConfig.Outputs
        channels = {split: TrainingInput(s3_data=splits[split].S3Output.S3Uri) for split in ("train", "validation")}

        # TrainXGBoost: the baseline, XGBoost script mode from the same bundle.
        step_train_xgb = TrainingStep(name=STEPS.train_xgboost,
                                      step_args=_xgboost_estimator(build).fit(inputs=channels), **job_options)

        # TuneCNN: search the CNN's hyperparameters on a subset (trials carry no Debugger/Profiler: tuning jobs
        # cannot run rules, and the trials must stay cheap).
        trial = cnn_estimator(build, name="cnn-trial", output="models/tuning", debug_uri=None,
                               hyperparameters={"train-fraction": TUNING_TRAIN_FRACTION})
        tuner = make_tuner(trial, params, tuning_strategy, base_job_prefix)
        step_tune = TuningStep(name=STEPS.tune_cnn, step_args=tuner.fit(inputs=channels), **job_options)

        # TrainCNN: all the data, the best trial's lr and batch size, Debugger rules and the Profiler.
        best = step_tune.properties.BestTrainingJob.TunedHyperParameters
        final_hyperparameters = {"epochs": params.cnn_epochs,
                                 **{name: best[name] for name in TUNED_FINAL_HYPERPARAMETERS},
                                 "architecture": params.cnn_architecture}
        # Its weights channel: pretrained weights for resnet18 (the trials never get one; train_keras.py, which has
        # no resnet18, ignores it).
        cnn = cnn_estimator(build, name="cnn", output="models/cnn", debug_uri=f"{build.artifacts}/debug",
                             hyperparameters=final_hyperparameters)
        cnn_channels = {**channels, "weights": TrainingInput(s3_data=params.pretrained_weights)}
        step_train_cnn = TrainingStep(name=STEPS.train_cnn, step_args=cnn.fit(inputs=cnn_channels), **job_options)

        # EvaluateBaseline: the XGBoost baseline on the test split, in the XGBoost image (the PyTorch image has
        # no xgboost, and a job must not pip-install at run time: no internet in a VPC).
        test_input = ProcessingInput(source=splits["test"].S3Output.S3Uri, destination="/opt/ml/processing/test",
                                     input_name="test")
        step_evaluate_baseline = ProcessingStep(
            name=STEPS.evaluate_baseline,
            step_args=processor(build, "evaluate.py", image_uri=xgboost_image(region)).run(
                inputs=[
                    code_input(build.code),
                    ProcessingInput(source=step_train_xgb.properties.ModelArtifacts.S3ModelArtifacts,
                                    destination="/opt/ml/processing/model", input_name="model"),
                    test_input,
                ],
                outputs=[ProcessingOutput(output_name="evaluation", source=EVALUATION_PATH)],
                arguments=["--model-dir", "/opt/ml/processing/model", "--test-dir", "/opt/ml/processing/test",
                           "--output-dir", EVALUATION_PATH],
            ),
            **job_options,
        )

        # Evaluate: the CNN on the test split, beside the baseline's figures -> evaluation.json (a PropertyFile).
        if registered_model_source == STEPS.train_cnn:
            cnn_model_data = step_train_cnn.properties.ModelArtifacts.S3ModelArtifacts
        else:
            cnn_model_data = step_tune.get_top_model_s3_uri(top_k=0, s3_bucket=default_bucket,
                                                            prefix=f"{pipeline_name}/models/tuning")
        baseline_uri = step_evaluate_baseline.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri
        evaluation_report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
        step_evaluate = ProcessingStep(
            name=STEPS.evaluate,
            step_args=processor(build, "evaluate.py").run(
                inputs=[
                    code_input(build.code),
                    ProcessingInput(source=cnn_model_data, destination="/opt/ml/processing/model/cnn",
                                    input_name="cnn-model"),
                    ProcessingInput(source=baseline_uri, destination="/opt/ml/processing/baseline",
                                    input_name="baseline"),
                    test_input,
                ],
                outputs=[ProcessingOutput(output_name="evaluation", source=EVALUATION_PATH)],
                arguments=[
                    "--model-dir", "/opt/ml/processing/model/cnn",
                    "--baseline-dir", "/opt/ml/processing/baseline",
                    "--test-dir", "/opt/ml/processing/test",
                    "--output-dir", EVALUATION_PATH,
                ],
            ),
            property_files=[evaluation_report],
            **job_options,
        )

        # Register: the CNN in the Model Registry with its metrics, served by the PyTorch image.
        evaluation_uri = step_evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri
        model_metrics = ModelMetrics(model_statistics=MetricsSource(
            content_type="application/json", s3_uri=Join(on="/", values=[evaluation_uri, "evaluation.json"])))
        model = _serving_model(build, cnn_model_data)
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

        # CheckAccuracy: register only a CNN that meets the threshold and beats the baseline; else fail, saying why.
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
            steps=[step_preprocess, step_tune, step_train_cnn, step_train_xgb, step_evaluate_baseline, step_evaluate,
                   step_condition],
            sagemaker_session=session,
        )


def _serving_model(build: Build, model_data: Any) -> Model:
    """What Register registers: the model.tar.gz with its code/ in the framework's inference image."""
    image = framework_image(build.framework, build.region, "inference", instance_type="ml.m5.large")
    if build.framework == "tensorflow":
        # TensorFlow Serving loads <model>/1/ and the container imports code/inference.py (input_handler,
        # output_handler) by itself: no entry point, so no repack step.
        return TensorFlowModel(model_data=model_data, role=build.role, framework_version=TENSORFLOW_VERSION,
                               image_uri=image, sagemaker_session=build.session)
    return Model(
        image_uri=image,
        model_data=model_data,
        role=build.role,
        sagemaker_session=build.session,
        env={"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"},
    )


def make_build(region: str, role: str, default_bucket: str, pipeline_name: str, base_job_prefix: str,
               bundle: SourceBundle | None = None, tuning_strategy: str = "Bayesian", *,
               framework: str = "pytorch") -> Build:
    """What every step of a build needs: the SDK session, the staged code's URIs, the parameters and the CNN's
    framework (pytorch or tensorflow)."""
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework={framework!r}: expected one of {', '.join(FRAMEWORKS)}")
    with quiet_sdk():
        session = get_session(region, default_bucket)
    return Build(region=region, role=role, session=session, framework=framework,
                 code=code_location(default_bucket, pipeline_name, bundle or collect_bundle()),
                 params=make_parameters(default_bucket, tuning_strategy),
                 artifacts=f"s3://{default_bucket}/{pipeline_name}", base_job_prefix=base_job_prefix)


def preprocess_step(build: Build, job_options: dict) -> ProcessingStep:
    """Preprocess: raw images (InputDataUrl, DataFormat) -> normalized train/validation/test splits."""
    params = build.params
    return ProcessingStep(
        name=STEPS.preprocess,
        step_args=processor(build, "preprocess.py").run(
            inputs=[
                code_input(build.code),
                ProcessingInput(source=params.input_data, destination="/opt/ml/processing/input/raw",
                                input_name="raw"),
            ],
            outputs=[ProcessingOutput(output_name=split, source=f"/opt/ml/processing/output/{split}")
                     for split in ("train", "validation", "test")],
            arguments=[
                "--input-dir", "/opt/ml/processing/input/raw",
                "--output-dir", "/opt/ml/processing/output",
                "--max-train-samples", params.max_train_samples.to_string(),
                "--max-test-samples", params.max_test_samples.to_string(),
                "--data-format", params.data_format,
                "--image-size", params.image_size.to_string(),
            ],
        ),
        **job_options,
    )


def processor(build: Build, script: str, image_uri: str | None = None) -> Processor:
    """A processing job that runs ``training/<script>`` from the bundle (in the CNN framework's image by default)."""
    return Processor(
        role=build.role,
        image_uri=image_uri or framework_image(build.framework, build.region, "training"),
        entrypoint=["python3", f"{CONTAINER_CODE_DIR}/training/{script}"],
        instance_type=build.params.processing_instance_type,
        instance_count=build.params.processing_instance_count,
        base_job_name=f"{build.base_job_prefix}-{script.removesuffix('.py')}",
        sagemaker_session=build.session,
        env={"PYTHONUNBUFFERED": "1"},
    )


def code_input(code: StagedCode) -> ProcessingInput:
    return ProcessingInput(source=code.source_uri, destination=CONTAINER_CODE_DIR, input_name="code")


def _xgboost_estimator(build: Build) -> EstimatorBase:
    return XGBoost(
        # The XGBoost container runs the program as a module (python -m <program minus .py>), after pip-installing
        # the bundle: a module name, not a path (training/train_xgboost.py fails with "No module named ...").
        entry_point=XGBOOST_PROGRAM,
        source_dir=build.code.tarball_uri,
        framework_version=XGBOOST_VERSION,
        image_uri=xgboost_image(build.region),
        role=build.role,
        instance_type=build.params.training_instance_type,
        instance_count=build.params.training_instance_count,
        output_path=f"{build.artifacts}/models/xgboost",
        base_job_name=f"{build.base_job_prefix}-xgboost",
        sagemaker_session=build.session,
        metric_definitions=XGBOOST_METRIC_DEFINITIONS,
        hyperparameters={"num-round": build.params.xgboost_num_round},
        disable_profiler=True,
        debugger_hook_config=False,
    )


def cnn_estimator(build: Build, *, name: str, output: str, debug_uri: str | None,
                  hyperparameters: dict) -> EstimatorBase:
    """PyTorch or TensorFlow script mode (``build.framework``) from the staged bundle; ``debug_uri`` = where
    Debugger/Profiler output goes (None: off)."""
    options: dict[str, Any] = dict(
        entry_point=CNN_PROGRAMS[build.framework],
        source_dir=build.code.tarball_uri,
        image_uri=framework_image(build.framework, build.region, "training"),
        role=build.role,
        instance_type=build.params.training_instance_type,
        instance_count=build.params.training_instance_count,
        output_path=f"{build.artifacts}/{output}",
        base_job_name=f"{build.base_job_prefix}-{name}",
        sagemaker_session=build.session,
        metric_definitions=CNN_METRIC_DEFINITIONS,
        hyperparameters=hyperparameters,
        enable_sagemaker_metrics=True,
        **debugging_options(debug_uri),
    )
    if build.framework == "tensorflow":
        return (DebuggedTensorFlow if debug_uri else TensorFlow)(
            framework_version=TENSORFLOW_VERSION, py_version=TENSORFLOW_PY_VERSION, model_dir=TENSORFLOW_MODEL_DIR,
            **options)
    return (DebuggedPyTorch if debug_uri else PyTorch)(
        framework_version=PYTORCH_VERSION, py_version=PYTORCH_PY_VERSION, **options)
