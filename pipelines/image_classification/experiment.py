"""The controlled-experiment pipeline behind ``mlops experiment``, built with the SageMaker Python SDK v2.

    Preprocess -> Train-V<i>-seed<s> -> Evaluate-V<i>-seed<s>   (one pair per variant and seed)

The same Preprocess step as the image-classification pipeline (same job, same parameters, cached the same way)
makes one split that every training job reads. Each training job is train_cnn.py in PyTorch script mode with
its variant's hyperparameters, its seed and the CnnEpochs parameter; nothing else differs between them. Each
model is scored on the test split by evaluate.py, as the pipeline's Evaluate step scores TrainCNN's.

Training and evaluation jobs are not cached (an experiment measures time per epoch: a cache hit would report
another run's), and carry no Debugger hook or Profiler, whose overhead would differ between architectures.
``lanes`` chains the jobs with DependsOn: with one lane (the default) they run one after another, each with
the whole CPU budget, so their seconds per epoch compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sagemaker.inputs import TrainingInput
from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.steps import CacheConfig, ProcessingStep, TrainingStep

from pipelines.image_classification.pipeline import (
    EVALUATION_PATH,
    cnn_estimator,
    code_input,
    default_cache_config,
    default_retry_policies,
    make_build,
    preprocess_step,
    processor,
)
from pipelines.image_classification.session import offline_default_session, quiet_sdk
from pipelines.source_bundle import SourceBundle

EXPERIMENT_OUTPUT = "models/experiment"


@dataclass(frozen=True)
class PlannedJob:
    """One training job of an experiment and the evaluation of its model."""

    train_step: str
    evaluate_step: str
    hyperparameters: dict[str, str | int | float | bool] = field(default_factory=dict)


def get_experiment_pipeline(
    jobs: list[PlannedJob],
    region: str = "us-east-1",
    role: str | None = None,
    default_bucket: str | None = None,
    pipeline_name: str = "image-classification-experiment",
    base_job_prefix: str | None = None,
    *,
    lanes: int = 1,
    bundle: SourceBundle | None = None,
) -> Pipeline:
    """Preprocess once, then each planned job's training and evaluation; ``lanes`` jobs at a time."""
    if not role or not default_bucket:
        raise ValueError("role and default_bucket are required (MLOPS_ROLE_ARN, MLOPS_BUCKET)")
    if not jobs:
        raise ValueError("an experiment needs at least one training job")
    if lanes < 1:
        raise ValueError(f"lanes must be >= 1, got {lanes}")
    build = make_build(region, role, default_bucket, pipeline_name, base_job_prefix or pipeline_name, bundle)
    params = build.params
    retry_policies = default_retry_policies()
    uncached = {"cache_config": CacheConfig(enable_caching=False), "retry_policies": retry_policies}

    with offline_default_session(build.session.boto_session), quiet_sdk():
        step_preprocess = preprocess_step(build, {"cache_config": default_cache_config(),
                                                  "retry_policies": retry_policies})
        splits = step_preprocess.properties.ProcessingOutputConfig.Outputs
        channels = {split: TrainingInput(s3_data=splits[split].S3Output.S3Uri) for split in ("train", "validation")}
        test_input = ProcessingInput(source=splits["test"].S3Output.S3Uri, destination="/opt/ml/processing/test",
                                     input_name="test")
        steps: list = [step_preprocess]
        last_in_lane: list[ProcessingStep | None] = [None] * lanes
        for index, job in enumerate(jobs):
            lane = index % lanes
            estimator = cnn_estimator(build, name="cnn-experiment", output=EXPERIMENT_OUTPUT, debug_uri=None,
                                      hyperparameters={"epochs": params.cnn_epochs, **job.hyperparameters})
            previous = last_in_lane[lane]
            train = TrainingStep(name=job.train_step, step_args=estimator.fit(inputs=channels),
                                 depends_on=[previous] if previous is not None else None, **uncached)
            evaluate = ProcessingStep(
                name=job.evaluate_step,
                step_args=processor(build, "evaluate.py").run(
                    inputs=[
                        code_input(build.code),
                        ProcessingInput(source=train.properties.ModelArtifacts.S3ModelArtifacts,
                                        destination="/opt/ml/processing/model/cnn", input_name="cnn-model"),
                        test_input,
                    ],
                    outputs=[ProcessingOutput(output_name="evaluation", source=EVALUATION_PATH)],
                    arguments=["--model-dir", "/opt/ml/processing/model/cnn", "--test-dir", "/opt/ml/processing/test",
                               "--output-dir", EVALUATION_PATH],
                ),
                **uncached,
            )
            last_in_lane[lane] = evaluate
            steps += [train, evaluate]
        return Pipeline(
            name=pipeline_name,
            parameters=[params.input_data, params.data_format, params.image_size, params.processing_instance_type,
                        params.processing_instance_count, params.training_instance_type,
                        params.training_instance_count, params.max_train_samples, params.max_test_samples,
                        params.cnn_epochs],
            steps=steps,
            sagemaker_session=build.session,
        )
