"""The deploy stages (staging, prod) and their settings, read from ``infra/config/<stage>.json``.

One file per stage serves both targets: on AWS its ``Parameters`` become the endpoint stack's parameters (the
deploy pipeline's build step and ``mlops deploy --target sagemaker`` add the model package and the names); on this
machine the same sampling percentage, capture prefix and smoke-test threshold drive the local endpoint, and
``Local`` holds what only the local endpoint needs (its port).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[1] / "infra" / "config"
STAGES = ("staging", "prod")
DEFAULT_STAGE = "staging"  # `mlops deploy --target local` without --stage: the stage that only needs Approved
REQUIRED_PARAMETERS = ("InstanceType", "InitialInstanceCount", "MinCapacity", "MaxCapacity",
                       "TargetInvocationsPerInstance", "DataCaptureSamplingPercentage", "DataCapturePrefix",
                       "ContainerStartupHealthCheckTimeoutInSeconds", "TrafficRoutingType", "TrafficStepPercent",
                       "WaitIntervalInSeconds", "TerminationWaitInSeconds", "Latency99thMicroseconds",
                       "Max5XXErrorsPerMinute")


class StageConfigError(ValueError):
    """A stage config file that is missing or malformed; the message names the file and the field."""


@dataclass(frozen=True)
class StageConfig:
    stage: str
    parameters: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)
    smoke_max_p99_ms: float = 1000.0
    local_port: int = 8080
    path: Path | None = None

    @property
    def sampling_percentage(self) -> int:
        return int(self.parameters["DataCaptureSamplingPercentage"])

    @property
    def capture_prefix(self) -> str:
        return self.parameters["DataCapturePrefix"].strip("/")

    @property
    def health_timeout_s(self) -> float:
        return float(self.parameters["ContainerStartupHealthCheckTimeoutInSeconds"])


def endpoint_name(group: str, stage: str) -> str:
    """The endpoint of a group's stage, the same name locally and on SageMaker."""
    return f"{group}-{stage}".lower()


def _int_field(path: Path, name: str, value: Any, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StageConfigError(f"{path}: {name} = {value!r} is not an integer") from None
    if not low <= number <= high:
        raise StageConfigError(f"{path}: {name} = {number} is outside {low}..{high}")
    return number


def load(stage: str, config_dir: Path | None = None) -> StageConfig:
    """Read and check one stage's file; every problem names the file and the field."""
    if stage not in STAGES:
        raise StageConfigError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    path = (config_dir or CONFIG_DIR) / f"{stage}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StageConfigError(f"{path}: no config file for stage {stage!r}") from None
    except json.JSONDecodeError as exc:
        raise StageConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("Stage") != stage:
        raise StageConfigError(f"{path}: expected an object with \"Stage\": \"{stage}\"")
    parameters = raw.get("Parameters")
    if not isinstance(parameters, dict):
        raise StageConfigError(f"{path}: \"Parameters\" must be an object of stack parameter values")
    missing = [name for name in REQUIRED_PARAMETERS if name not in parameters]
    if missing:
        raise StageConfigError(f"{path}: Parameters lacks {', '.join(missing)}")
    bad = [name for name, value in parameters.items() if not isinstance(value, str)]
    if bad:  # CloudFormation parameter values are strings; a number here would be silently coerced elsewhere
        raise StageConfigError(f"{path}: Parameters {', '.join(bad)} must be strings")
    _int_field(path, "DataCaptureSamplingPercentage", parameters["DataCaptureSamplingPercentage"], 0, 100)
    low = _int_field(path, "MinCapacity", parameters["MinCapacity"], 1, 1000)
    high = _int_field(path, "MaxCapacity", parameters["MaxCapacity"], 1, 1000)
    if low > high:
        raise StageConfigError(f"{path}: MinCapacity {low} exceeds MaxCapacity {high}")
    smoke = raw.get("SmokeTest") or {}
    local = raw.get("Local") or {}
    try:
        max_p99 = float(smoke.get("MaxP99Milliseconds", 1000))
    except (TypeError, ValueError):
        raise StageConfigError(f"{path}: SmokeTest.MaxP99Milliseconds must be a number") from None
    return StageConfig(stage=stage, parameters=dict(parameters), tags=dict(raw.get("Tags") or {}),
                       smoke_max_p99_ms=max_p99,
                       local_port=_int_field(path, "Local.Port", local.get("Port", 8080), 1, 65535), path=path)
