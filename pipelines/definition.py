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
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

LOCAL_ROLE_ARN = "arn:aws:iam::000000000000:role/mlops-local"
LOCAL_BUCKET = "mlops-local"
DEFAULTS = {
    "region": ("MLOPS_REGION", "us-east-1"),
    "role": ("MLOPS_ROLE_ARN", None),
    "bucket": ("MLOPS_BUCKET", None),
    "pipeline_name": ("MLOPS_PIPELINE_NAME", "image-classification"),
    "model_package_group": ("MLOPS_MODEL_PACKAGE_GROUP", "image-classification"),
    "base_job_prefix": ("MLOPS_BASE_JOB_PREFIX", None),
}
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}")
CODE_HASH = re.compile(r"(/code/)[0-9a-f]{64}(/)")
JOB_NAME_HYPERPARAMETER = "sagemaker_job_name"


@dataclass(frozen=True)
class PipelineConfig:
    """Where and as what the pipeline is built; every field can come from an MLOPS_* variable."""

    region: str = "us-east-1"
    role: str | None = None
    bucket: str | None = None
    pipeline_name: str = "image-classification"
    model_package_group: str = "image-classification"
    base_job_prefix: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # passed to get_pipeline (cache_config, ...)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> PipelineConfig:
        """MLOPS_* variables, then explicit non-None overrides (CLI options) on top."""
        environ = os.environ if environ is None else environ
        values = {name: environ.get(var) or default for name, (var, default) in DEFAULTS.items()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def for_local(self) -> PipelineConfig:
        """Local runs need no AWS: a placeholder role and the local store's bucket when none is set."""
        return replace(self, role=self.role or LOCAL_ROLE_ARN, bucket=self.bucket or LOCAL_BUCKET)

    def require_aws(self) -> PipelineConfig:
        missing = [var for name, (var, _) in DEFAULTS.items() if name in ("role", "bucket") and not getattr(self, name)]
        if missing:
            raise ValueError(f"running on SageMaker needs {' and '.join(missing)} (IAM role ARN, S3 bucket)")
        return self


def build_pipeline(config: PipelineConfig):
    """The SDK Pipeline object for ``config`` (no network call)."""
    from pipelines.image_classification.pipeline import get_pipeline

    config = config.for_local() if not (config.role and config.bucket) else config
    return get_pipeline(
        region=config.region,
        role=config.role,
        default_bucket=config.bucket,
        pipeline_name=config.pipeline_name,
        model_package_group_name=config.model_package_group,
        base_job_prefix=config.base_job_prefix or config.pipeline_name,
        **config.extra,
    )


def build_definition(config: PipelineConfig) -> dict[str, Any]:
    """The stabilised definition as a dict: what ``mlops definition`` prints and what gets upserted."""
    from pipelines.image_classification.pipeline import quiet_sdk

    pipeline = build_pipeline(config)
    with quiet_sdk():
        definition = json.loads(pipeline.definition())
    return stabilise(definition)


def iter_steps(steps: list[dict[str, Any]]):
    """Every step, condition branches included (they are nested in the Condition step's Arguments)."""
    for step in steps:
        yield step
        if step.get("Type") == "Condition":
            arguments = step.get("Arguments", {})
            yield from iter_steps(arguments.get("IfSteps", []))
            yield from iter_steps(arguments.get("ElseSteps", []))


def stabilise(definition: dict[str, Any]) -> dict[str, Any]:
    """Drop build-time job names from hyperparameters so identical code and settings give identical JSON."""
    result = copy.deepcopy(definition)
    for step in iter_steps(result.get("Steps", [])):
        arguments = step.get("Arguments", {})
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


class DefinitionError(Exception):
    """A definition file that cannot be read as a pipeline definition."""


def load_definition(path: str) -> dict[str, Any]:
    """Read a definition file, with errors that name the file and the problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            definition = json.load(handle)
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(definition, dict) or not isinstance(definition.get("Steps"), list):
        raise DefinitionError(f"{path}: not a pipeline definition (expected an object with a 'Steps' list)")
    return definition


def parse_parameter_options(items: tuple[str, ...] | list[str], option: str = "--param") -> dict[str, str]:
    """``("Name=Value", ...)`` from repeated options into a dict (the last of a repeated name wins)."""
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{option} {item!r}: expected Name=Value")
        parsed[name.strip()] = value
    return parsed


def check_parameter_overrides(definition: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """Refuse overrides the pipeline would reject at start time: unknown names, wrong types, values off-enum."""
    declared = {p["Name"]: p for p in definition.get("Parameters", []) if isinstance(p, dict) and "Name" in p}
    for name, value in overrides.items():
        parameter = declared.get(name)
        if parameter is None:
            raise ValueError(f"--param {name}: not a parameter of this pipeline (declared: {', '.join(declared)})")
        kind = parameter.get("Type", "String")
        try:
            if kind == "Integer":
                int(value)
            elif kind == "Float":
                float(value)
            elif kind == "Boolean" and value.lower() not in ("true", "false"):
                raise ValueError(value)
        except ValueError:
            raise ValueError(f"--param {name}={value!r}: expected a {kind}") from None
        enum = parameter.get("EnumValues")
        if enum and value not in enum:
            raise ValueError(f"--param {name}={value!r}: expected one of {', '.join(map(str, enum))}")
    return overrides
