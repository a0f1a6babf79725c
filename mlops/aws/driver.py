"""Drive the pipeline on Amazon SageMaker with boto3: stage code, upsert, start, wait, list, describe.

The definition is built offline (:mod:`mlops.definition.build`) and sent as JSON, so this module is the
only place that talks to AWS. Calls an endpoint does not serve (moto lacks ListPipelineExecutionSteps)
degrade to a :class:`Unavailable` result with a message, never a traceback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from mlops import staging

TERMINAL_STATUSES = {"Succeeded", "Failed", "Stopped"}
NOT_FOUND_MESSAGES = ("does not exist", "could not find", "not found")
DEFAULT_TAGS = {"project": "sagemaker-image-classification-mlops"}


class DriverError(Exception):
    """An AWS call failed in a way the user must act on (message says what and why)."""


@dataclass(frozen=True)
class Unavailable:
    """An answer the endpoint could not give, with the reason to show instead of a traceback."""

    what: str
    reason: str

    def __str__(self) -> str:
        return f"{self.what} unavailable: {self.reason}"


@dataclass(frozen=True)
class UpsertResult:
    pipeline_arn: str
    created: bool


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', str(exc))}"
    return str(exc) or type(exc).__name__


class SageMakerDriver:
    """Upsert/start/describe a pipeline in one region; pass a boto3 session to use other credentials."""

    def __init__(self, region: str, boto_session: boto3.Session | None = None) -> None:
        self.region = region
        session = boto_session or boto3.Session(region_name=region)
        self.sagemaker = session.client("sagemaker", region_name=region)
        self.s3 = session.client("s3", region_name=region)

    # ------------------------------------------------------------------ staging
    def stage_code(self, bundle: staging.SourceBundle, staged: staging.StagedCode) -> list[str]:
        """Upload the job code bundle (skipped when that content hash is already there)."""
        try:
            return staging.stage_to_s3(bundle, staged, self.s3)
        except (ClientError, BotoCoreError) as exc:
            raise DriverError(f"uploading job code to {staged.tarball_uri} failed: {_error_text(exc)}") from exc

    def stage_dataset(self, local_dir: Path, uri: str) -> list[str]:
        """Upload the shipped dataset files to ``uri`` (a prefix) when they are not there yet."""
        try:
            return staging.stage_dataset_to_s3(local_dir, uri, self.s3)
        except (ClientError, BotoCoreError) as exc:
            raise DriverError(f"uploading the dataset to {uri} failed: {_error_text(exc)}") from exc

    # ------------------------------------------------------------------ pipelines
    def upsert(self, pipeline_name: str, definition: dict[str, Any], role_arn: str,
               description: str = "", tags: dict[str, str] | None = None) -> UpsertResult:
        """Create the pipeline, or update it in place when it exists (never a duplicate); tags both ways."""
        body = json.dumps(definition)
        tag_list = [{"Key": k, "Value": v} for k, v in {**DEFAULT_TAGS, **(tags or {})}.items()]
        try:
            existing = self._describe_pipeline(pipeline_name)
            if existing is None:
                response = self.sagemaker.create_pipeline(
                    PipelineName=pipeline_name, PipelineDefinition=body, RoleArn=role_arn,
                    PipelineDescription=description, Tags=tag_list,
                )
                return UpsertResult(response["PipelineArn"], created=True)
            response = self.sagemaker.update_pipeline(
                PipelineName=pipeline_name, PipelineDefinition=body, RoleArn=role_arn,
                PipelineDescription=description,
            )
            arn = response.get("PipelineArn") or existing["PipelineArn"]
            self.sagemaker.add_tags(ResourceArn=arn, Tags=tag_list)
            return UpsertResult(arn, created=False)
        except (ClientError, BotoCoreError) as exc:
            raise DriverError(f"upserting pipeline {pipeline_name!r} failed: {_error_text(exc)}") from exc

    def _describe_pipeline(self, pipeline_name: str) -> dict[str, Any] | None:
        try:
            return self.sagemaker.describe_pipeline(PipelineName=pipeline_name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            message = exc.response.get("Error", {}).get("Message", "")
            if code == "ResourceNotFound" or any(text in message.lower() for text in NOT_FOUND_MESSAGES):
                return None
            raise

    def execution_parameters(self, execution_arn: str) -> dict[str, str] | Unavailable:
        """The parameter values an execution ran with."""
        values: dict[str, str] = {}
        request: dict[str, Any] = {"PipelineExecutionArn": execution_arn}
        try:
            while True:
                response = self.sagemaker.list_pipeline_parameters_for_execution(**request)
                values.update({p["Name"]: p["Value"] for p in response.get("PipelineParameters", [])})
                if not response.get("NextToken"):
                    return values
                request["NextToken"] = response["NextToken"]
        except NotImplementedError as exc:
            return Unavailable("execution parameters", f"this endpoint does not implement it ({exc})")
        except (ClientError, BotoCoreError) as exc:
            return Unavailable("execution parameters", _error_text(exc))

    def pipeline_definition(self, pipeline_name: str) -> dict[str, Any]:
        described = self._describe_pipeline(pipeline_name)
        if described is None:
            raise DriverError(f"pipeline {pipeline_name!r} does not exist in {self.region}")
        return json.loads(described["PipelineDefinition"])

    def start(self, pipeline_name: str, parameters: dict[str, str] | None = None,
              display_name: str | None = None) -> str:
        """Start an execution with parameter overrides; returns the execution ARN."""
        request: dict[str, Any] = {
            "PipelineName": pipeline_name,
            "PipelineParameters": [{"Name": k, "Value": str(v)} for k, v in (parameters or {}).items()],
        }
        if display_name:
            request["PipelineExecutionDisplayName"] = display_name
        try:
            return self.sagemaker.start_pipeline_execution(**request)["PipelineExecutionArn"]
        except (ClientError, BotoCoreError) as exc:
            raise DriverError(f"starting pipeline {pipeline_name!r} failed: {_error_text(exc)}") from exc

    # ------------------------------------------------------------------ executions
    def resolve_execution_arn(self, pipeline_name: str, execution_id: str) -> str:
        """Accept a full execution ARN or its last part (the execution id)."""
        if execution_id.startswith("arn:"):
            return execution_id
        for summary in self.list_executions(pipeline_name):
            if summary["PipelineExecutionArn"].rsplit("/", 1)[-1] == execution_id:
                return summary["PipelineExecutionArn"]
        raise DriverError(f"no execution {execution_id!r} of pipeline {pipeline_name!r} in {self.region}")

    def list_executions(self, pipeline_name: str, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first, across pages, up to ``limit``."""
        results: list[dict[str, Any]] = []
        request: dict[str, Any] = {"PipelineName": pipeline_name, "SortBy": "CreationTime", "SortOrder": "Descending"}
        try:
            while len(results) < limit:
                response = self.sagemaker.list_pipeline_executions(**request, MaxResults=min(100, limit))
                results.extend(response.get("PipelineExecutionSummaries", []))
                if not response.get("NextToken"):
                    break
                request["NextToken"] = response["NextToken"]
        except (ClientError, BotoCoreError) as exc:
            raise DriverError(f"listing executions of {pipeline_name!r} failed: {_error_text(exc)}") from exc
        return results[:limit]

    def describe(self, execution_arn: str) -> dict[str, Any]:
        """The execution as DescribePipelineExecution gives it, plus ``Steps`` (or why they are unavailable)."""
        try:
            described = self.sagemaker.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        except (ClientError, BotoCoreError) as exc:
            raise DriverError(f"describing execution {execution_arn} failed: {_error_text(exc)}") from exc
        described.pop("ResponseMetadata", None)
        parameters = self.execution_parameters(execution_arn)
        if isinstance(parameters, Unavailable):
            described["ParametersUnavailable"] = str(parameters)
        else:
            described["Parameters"] = parameters
        steps = self.list_steps(execution_arn)
        if isinstance(steps, Unavailable):
            described["StepsUnavailable"] = str(steps)
        else:
            described["Steps"] = steps
        return described

    def list_steps(self, execution_arn: str) -> list[dict[str, Any]] | Unavailable:
        """Step statuses, oldest first; :class:`Unavailable` when the endpoint cannot list them."""
        steps: list[dict[str, Any]] = []
        request: dict[str, Any] = {"PipelineExecutionArn": execution_arn, "SortOrder": "Ascending"}
        try:
            while True:
                response = self.sagemaker.list_pipeline_execution_steps(**request)
                steps.extend(response.get("PipelineExecutionSteps", []))
                if not response.get("NextToken"):
                    return steps
                request["NextToken"] = response["NextToken"]
        except NotImplementedError as exc:  # moto: "The list_pipeline_execution_steps action has not been implemented"
            return Unavailable("step statuses", f"this endpoint does not implement ListPipelineExecutionSteps ({exc})")
        except (ClientError, BotoCoreError) as exc:
            return Unavailable("step statuses", _error_text(exc))

    def wait(self, execution_arn: str, *, poll_seconds: float = 30.0, timeout_seconds: float = 6 * 3600,
             on_update: Callable[[str, list[dict[str, Any]] | Unavailable], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> str:
        """Poll until the execution ends; ``on_update(status, steps)`` is called when anything changed."""
        deadline = time.monotonic() + timeout_seconds
        last: Any = None
        while True:
            try:
                status = self.sagemaker.describe_pipeline_execution(
                    PipelineExecutionArn=execution_arn)["PipelineExecutionStatus"]
            except (ClientError, BotoCoreError) as exc:
                raise DriverError(f"polling execution {execution_arn} failed: {_error_text(exc)}") from exc
            steps = self.list_steps(execution_arn)
            snapshot = (status, str(steps) if isinstance(steps, Unavailable) else
                        [(s.get("StepName"), s.get("StepStatus")) for s in steps])
            if on_update and snapshot != last:
                on_update(status, steps)
            last = snapshot
            if status in TERMINAL_STATUSES:
                return status
            if time.monotonic() >= deadline:
                raise DriverError(f"execution {execution_arn} still {status} after {timeout_seconds:.0f} s")
            sleep(poll_seconds)
