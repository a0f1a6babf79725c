"""``mlops gate --target sagemaker``: the prod gate is the deploy CodePipeline's manual approval.

The decision is recorded in SageMaker's Model Registry (the version's ``mlops.gate.<n>`` metadata, so
``mlops registry describe --target sagemaker`` shows it and ``mlops deploy --target sagemaker --stage prod``
accepts it), and, when the pipeline waits at its approval action for that version, sent there with
PutApprovalResult (summary: who and why), which moves the pipeline on to DeployProd or stops it.

Which version a waiting execution is for comes from its build action's output variables (``MODEL_PACKAGE_VERSION``,
exported by infra/buildspec-deploy.yml): a decision about another version is refused rather than applied to the
wrong one.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from mlops.registry import APPROVED, RegistryError, SageMakerRegistry

# infra/deploy-pipeline.yml's names (tests/infra checks the template uses them)
BUILD_ACTION = "SelectModel"
APPROVAL_STAGE = "ApproveProd"
APPROVAL_ACTION = "ApproveProd"
VERSION_VARIABLE = "MODEL_PACKAGE_VERSION"


def pending_approval(codepipeline: Any, pipeline: str) -> dict[str, Any] | None:
    """The approval the pipeline waits at: its token and execution, or None."""
    state = codepipeline.get_pipeline_state(name=pipeline)
    for stage in state.get("stageStates", []):
        if stage.get("stageName") != APPROVAL_STAGE:
            continue
        for action in stage.get("actionStates", []):
            latest = action.get("latestExecution") or {}
            if action.get("actionName") == APPROVAL_ACTION and latest.get("status") == "InProgress" \
                    and latest.get("token"):
                return {"token": latest["token"],
                        "pipelineExecutionId": (stage.get("latestExecution") or {}).get("pipelineExecutionId")}
    return None


def execution_version(codepipeline: Any, pipeline: str, execution_id: str) -> int | None:
    """The model version an execution's build action picked."""
    pages = codepipeline.get_paginator("list_action_executions").paginate(
        pipelineName=pipeline, filter={"pipelineExecutionId": execution_id})
    for page in pages:
        for execution in page.get("actionExecutionDetails", []):
            if execution.get("actionName") == BUILD_ACTION:
                value = ((execution.get("output") or {}).get("outputVariables") or {}).get(VERSION_VARIABLE)
                return int(value) if value else None
    return None


def decide(region: str, group: str, stage: str, decision: str, comment: str, version: int | None,
           approver: str | None, pipeline: str, codepipeline: Any = None,
           registry: SageMakerRegistry | None = None) -> tuple[dict[str, Any], str | None]:
    """Record the decision and answer the waiting approval; returns (record, what happened in the pipeline)."""
    codepipeline = codepipeline or boto3.client("codepipeline", region_name=region)
    registry = registry or SageMakerRegistry(region=region)
    try:
        pending = pending_approval(codepipeline, pipeline)
        waiting_for = execution_version(codepipeline, pipeline, pending["pipelineExecutionId"]) if pending else None
    except (ClientError, BotoCoreError) as exc:
        raise RegistryError(f"cannot read deploy pipeline {pipeline!r}: {exc}") from exc
    if pending and waiting_for is not None and version is not None and version != waiting_for:
        raise RegistryError(f"pipeline {pipeline} waits for a decision on version {waiting_for}, not {version}")
    record = registry.decide_gate(group, stage, decision, comment,
                                  version if version is not None else waiting_for, approver)
    if not pending or (waiting_for is not None and waiting_for != record["ModelPackageVersion"]):
        return record, None
    entry = record["GateHistory"][-1]
    try:
        codepipeline.put_approval_result(
            pipelineName=pipeline, stageName=APPROVAL_STAGE, actionName=APPROVAL_ACTION, token=pending["token"],
            result={"summary": f"{entry['Decision']} by {entry['By']}: {comment}"[:512],
                    "status": "Approved" if decision == APPROVED else "Rejected"})
    except (ClientError, BotoCoreError) as exc:
        raise RegistryError(f"recorded in the registry, but pipeline {pipeline} did not take the decision: "
                            f"{exc}") from exc
    return record, (f"pipeline {pipeline} execution {pending['pipelineExecutionId']}: approval "
                    f"{'given, DeployProd runs next' if decision == APPROVED else 'refused, the execution stops'}")
