"""The SageMaker endpoint of a stage, as a CloudFormation stack of ``infra/endpoint.yml``, driven with boto3.

``mlops deploy --target sagemaker --stage S [--version N]`` picks the version (the one named, else the newest
Approved; prod also needs staging's smoke test passed and the prod gate approved, as locally), turns the stage's
config file into the stack's parameters (:func:`stack_parameters`, the same function the deploy pipeline's build
step uses through :func:`template_configuration`), then creates or updates the stack and waits for it. An update
changes the Model, hence the EndpointConfig, hence the Endpoint: SageMaker rolls it out blue/green with the
traffic shifting and alarms the template declares.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from mlops import stage_config
from mlops.registry import APPROVED, RegistryError, SageMakerRegistry
from mlops.registry.base import GATED_STAGES
from training.atomic import atomic_write_json, atomic_write_text

TEMPLATE = Path(__file__).resolve().parents[2] / "infra" / "endpoint.yml"
DEFAULT_PROJECT = "image-classification"  # the ProjectName of the artifacts and roles stacks (their exports)
NO_UPDATES = "No updates are to be performed"


class StackError(Exception):
    """The endpoint stack could not be created or updated; the message says why."""


def _error_text(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'Error')}: {error.get('Message', str(exc))}"
    return str(exc) or type(exc).__name__


def stack_name_for(endpoint: str) -> str:
    return f"{endpoint}-endpoint"


def stack_parameters(config: stage_config.StageConfig, model_package_arn: str, endpoint: str,
                     project: str = DEFAULT_PROJECT) -> dict[str, str]:
    """The endpoint template's parameter values for one stage and one model package."""
    return {**config.parameters, "ProjectName": project, "StageName": config.stage, "EndpointName": endpoint,
            "ModelPackageName": model_package_arn}


def template_configuration(config: stage_config.StageConfig, record: dict[str, Any], endpoint: str,
                           project: str = DEFAULT_PROJECT) -> dict[str, Any]:
    """CodePipeline's CloudFormation template configuration file (Parameters, Tags) for the stage."""
    tags = {**config.tags, "mlops:model-package-version": str(record["ModelPackageVersion"])}
    return {"Parameters": stack_parameters(config, record["ModelPackageArn"], endpoint, project), "Tags": tags}


def choose_record(registry: Any, group: str, stage: str, version: int | None) -> dict[str, Any]:
    """The version to deploy, refused unless the stage allows it."""
    if version is None:
        record = registry.latest_approved(group)
        if record is None:
            raise StackError(f"no Approved version in model package group {group!r}")
    else:
        record = registry.describe_model_package(group, version)
        if record["ModelApprovalStatus"] != APPROVED:
            raise StackError(f"{group} version {version} is {record['ModelApprovalStatus']}, not {APPROVED}")
    if stage in GATED_STAGES:
        try:
            registry.check_promotable(record, stage)
        except RegistryError as exc:
            raise StackError(str(exc)) from None
    return record


def served_package(sagemaker: Any, endpoint: str) -> dict[str, Any]:
    """Which model package an InService endpoint serves (endpoint -> config -> model -> ModelPackageName)."""
    try:
        described = sagemaker.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        from mlops.serve.smoke import SmokeTestError

        raise SmokeTestError(f"endpoint {endpoint}: {_error_text(exc)}") from exc
    if described["EndpointStatus"] != "InService":
        from mlops.serve.smoke import SmokeTestError

        raise SmokeTestError(f"endpoint {endpoint} is {described['EndpointStatus']}, not InService")
    config = sagemaker.describe_endpoint_config(EndpointConfigName=described["EndpointConfigName"])
    model_name = config["ProductionVariants"][0]["ModelName"]
    model = sagemaker.describe_model(ModelName=model_name.rsplit("/", 1)[-1])  # a name; moto's CloudFormation gives an ARN
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    arn = container.get("ModelPackageName") or ""
    if "/" not in arn:
        from mlops.serve.smoke import SmokeTestError

        raise SmokeTestError(f"endpoint {endpoint}'s model {model['ModelName']} is not built from a model package")
    return {"EndpointName": endpoint, "EndpointStatus": described["EndpointStatus"], "ModelPackageArn": arn,
            "ModelPackageVersion": int(arn.rsplit("/", 1)[1])}


def write_stack_configs(region: str, group: str, version: int | None, output_dir: Path,
                        project: str = DEFAULT_PROJECT, registry: Any = None) -> list[Path]:
    """The deploy pipeline's build step: one version, every stage's template configuration, the exported variables."""
    registry = registry or SageMakerRegistry(region=region)
    record = choose_record(registry, group, "staging", version)  # prod's gate is the pipeline's own, later
    written = []
    for stage in stage_config.STAGES:
        configuration = template_configuration(stage_config.load(stage), record,
                                               stage_config.endpoint_name(group, stage), project)
        written.append(atomic_write_json(Path(output_dir) / f"{stage}-config.json", configuration))
    env = f"MODEL_PACKAGE_ARN={record['ModelPackageArn']}\nMODEL_PACKAGE_VERSION={record['ModelPackageVersion']}\n"
    written.append(atomic_write_text(Path(output_dir) / "selected.env", env))
    return written


class EndpointStackDeployer:
    """Create or update a stage's endpoint stack; one region, default credentials unless a session is given."""

    def __init__(self, region: str, session: boto3.Session | None = None, poll_seconds: float = 15.0) -> None:
        session = session or boto3.Session(region_name=region)
        self.region = region
        self.cfn = session.client("cloudformation", region_name=region)
        self.sagemaker = session.client("sagemaker", region_name=region)
        self.registry = SageMakerRegistry(sagemaker_client=self.sagemaker, s3_client=session.client("s3"),
                                          sts_client=session.client("sts"), region=region)
        self.poll_seconds = poll_seconds

    def _stack(self, name: str) -> dict[str, Any] | None:
        try:
            return self.cfn.describe_stacks(StackName=name)["Stacks"][0]
        except ClientError as exc:
            if "does not exist" in exc.response.get("Error", {}).get("Message", ""):
                return None
            raise

    def deploy(self, group: str, stage: str, version: int | None = None, endpoint: str | None = None,
               stack_name: str | None = None, cfn_role_arn: str | None = None, project: str = DEFAULT_PROJECT,
               bucket: str | None = None, wait: bool = True,
               say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
        config = stage_config.load(stage)
        endpoint = endpoint or stage_config.endpoint_name(group, stage)
        stack_name = stack_name or stack_name_for(endpoint)
        record = choose_record(self.registry, group, stage, version)
        configuration = template_configuration(config, record, endpoint, project)
        request: dict[str, Any] = {
            "StackName": stack_name, "TemplateBody": TEMPLATE.read_text(encoding="utf-8"),
            "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in configuration["Parameters"].items()],
            "Tags": [{"Key": k, "Value": v} for k, v in configuration["Tags"].items()],
        }
        if cfn_role_arn:
            request["RoleARN"] = cfn_role_arn
        try:
            existing = self._stack(stack_name)
            if existing is None:
                say(f"creating stack {stack_name}: {endpoint} with {group} version {record['ModelPackageVersion']}")
                self.cfn.create_stack(**request)
                operation, waiter = "created", "stack_create_complete"
            else:
                say(f"updating stack {stack_name}: {endpoint} to {group} version {record['ModelPackageVersion']}")
                try:
                    self.cfn.update_stack(**request)
                    operation, waiter = "updated", "stack_update_complete"
                except ClientError as exc:
                    if NO_UPDATES not in exc.response.get("Error", {}).get("Message", ""):
                        raise
                    operation, waiter = "unchanged", None
            if wait and waiter:
                self.cfn.get_waiter(waiter).wait(StackName=stack_name,
                                                 WaiterConfig={"Delay": self.poll_seconds, "MaxAttempts": 240})
            stack = self._stack(stack_name) or {}
        except WaiterError as exc:
            raise StackError(f"stack {stack_name} did not reach its goal: {exc} (see its events: aws cloudformation "
                             f"describe-stack-events --stack-name {stack_name})") from exc
        except (ClientError, BotoCoreError) as exc:
            raise StackError(f"deploying stack {stack_name} failed: {_error_text(exc)}") from exc
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}
        result = {"StackName": stack_name, "Operation": operation, "StackStatus": stack.get("StackStatus"),
                  "Stage": stage, "ModelPackageArn": record["ModelPackageArn"],
                  "ModelPackageVersion": record["ModelPackageVersion"],
                  "EndpointName": outputs.get("EndpointName", endpoint)}
        if wait:
            try:
                described = self.sagemaker.describe_endpoint(EndpointName=result["EndpointName"])
                result["EndpointStatus"] = described["EndpointStatus"]
            except ClientError as exc:
                result["EndpointStatus"] = f"unknown ({_error_text(exc)})"
        return result
