"""Where and as what the pipeline is built: region, role, bucket, names, and the build options.

Every field can come from an MLOPS_* variable or a top-level ``mlops`` option. Kept apart from the build
itself so that commands which never build a definition do not import the SageMaker SDK.
"""

from __future__ import annotations

import os
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
    "tuning_strategy": ("MLOPS_TUNING_STRATEGY", "Bayesian"),  # a build option: it shapes the tuning job
    "framework": ("MLOPS_FRAMEWORK", "pytorch"),  # a build option: the CNN's framework (pytorch or tensorflow)
}


@dataclass(frozen=True)
class PipelineConfig:
    """Where and as what the pipeline is built; every field can come from an MLOPS_* variable."""

    region: str = "us-east-1"
    role: str | None = None
    bucket: str | None = None
    pipeline_name: str = "image-classification"
    model_package_group: str = "image-classification"
    base_job_prefix: str | None = None
    tuning_strategy: str = "Bayesian"
    framework: str = "pytorch"
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
