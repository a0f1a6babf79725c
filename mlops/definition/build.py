"""Build the pipeline definition JSON, make it stable, and normalise it for diffs and snapshots.

Two levels, because they serve different readers:
- :func:`stabilise` edits what SageMaker receives: it drops the ``sagemaker_job_name`` hyperparameter
  the SDK stamps with the build time into the tuning job (it already does so itself for training
  steps). A changing argument would make every upsert a step-cache miss (aws/sagemaker-python-sdk #2940).
- :func:`normalise` is for humans and the snapshot test only: it also replaces the content hash of the
  code bundle and any leftover timestamp with placeholders, so a definition diff shows structure.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from typing import TYPE_CHECKING, Any

from mlops.definition.config import PipelineConfig
from mlops.definition.model import iter_steps
from pipelines.image_classification.pipeline import get_pipeline
from pipelines.image_classification.session import quiet_sdk

if TYPE_CHECKING:
    from sagemaker.workflow.pipeline import Pipeline

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}")
CODE_HASH = re.compile(r"(/code/)[0-9a-f]{64}(/)")
JOB_NAME_HYPERPARAMETER = "sagemaker_job_name"


def build_pipeline(config: PipelineConfig) -> Pipeline:
    """The SDK Pipeline object for ``config`` (no network call)."""
    config = config.for_local() if not (config.role and config.bucket) else config
    return get_pipeline(
        region=config.region,
        role=config.role,
        default_bucket=config.bucket,
        pipeline_name=config.pipeline_name,
        model_package_group_name=config.model_package_group,
        base_job_prefix=config.base_job_prefix or config.pipeline_name,
        tuning_strategy=config.tuning_strategy,
        framework=config.framework,
        **config.extra,
    )


def build_definition(config: PipelineConfig, sdk_warnings: list[str] | None = None) -> dict[str, Any]:
    """The stabilised definition as a dict: what ``mlops definition`` prints and what gets upserted.

    The SDK's deprecation warnings (framework profiling on PyTorch >= 2.0, ...) are collected into
    ``sdk_warnings`` when given, once each, so ``mlops validate`` can show them instead of hiding them.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        pipeline = build_pipeline(config)
        with quiet_sdk():
            definition = json.loads(pipeline.definition())
    if sdk_warnings is not None:
        for warning in caught:
            text = " ".join(str(warning.message).split())
            if "sagemaker" in warning.filename and text not in sdk_warnings:
                sdk_warnings.append(text)
    return stabilise(definition)


def stabilise(definition: dict[str, Any]) -> dict[str, Any]:
    """Drop build-time job names from hyperparameters so identical code and settings give identical JSON."""
    result = copy.deepcopy(definition)
    for step, _, _ in iter_steps(result.get("Steps", [])):
        arguments = step.get("Arguments", {}) if isinstance(step, dict) else {}
        for holder in (arguments, arguments.get("TrainingJobDefinition", {})):
            for key in ("HyperParameters", "StaticHyperParameters"):
                if isinstance(holder.get(key), dict):
                    holder[key].pop(JOB_NAME_HYPERPARAMETER, None)
    return result


def normalise(definition: dict[str, Any]) -> dict[str, Any]:
    """Stabilise, then replace the code hash and any timestamp with placeholders (for diffs only)."""

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str):
            return TIMESTAMP.sub("<timestamp>", CODE_HASH.sub(r"\1<code-hash>\2", value))
        return value

    return walk(stabilise(definition))


def to_json(definition: dict[str, Any]) -> str:
    return json.dumps(definition, indent=2, sort_keys=False) + "\n"
