"""Condition, Fail and RegisterModel steps: no job process, just the definition's semantics.

- Condition: every condition in Conditions must hold (SageMaker ANDs them); the outcome picks IfSteps or
  ElseSteps and is the step's ``Outcome`` property.
- Fail: the execution fails with ErrorMessage (an expression, resolved with the figures it names).
- RegisterModel: the resolved CreateModelPackage arguments go to the local Model Registry.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from mlops.local.expressions import Context, ExpressionError, describe_condition, evaluate_condition, to_text
from mlops.local.jobs import THROTTLING, JobFailed
from mlops.local.runtime import StepResult, StepRun
from mlops.registry import LocalRegistry, RegistryError


def run_condition(step: StepRun, raw_conditions: list[dict[str, Any]], ctx: Context) -> StepResult:
    """Conditions are evaluated from the raw definition so JsonGet reads property files at this moment."""
    evaluations = []
    outcome = True
    try:
        for condition in raw_conditions:
            value = evaluate_condition(condition, ctx)
            evaluations.append({"Condition": describe_condition(condition, ctx), "Result": value})
            outcome = outcome and value
    except ExpressionError as exc:
        raise JobFailed(f"cannot evaluate the condition: {exc}") from exc
    return StepResult(properties={"Outcome": "True" if outcome else "False"},
                      metadata={"Condition": {"Outcome": "True" if outcome else "False"},
                                "Evaluations": evaluations})


def run_fail(step: StepRun) -> StepResult:
    message = to_text(step.arguments.get("ErrorMessage")) or "Fail step reached"
    raise JobFailed(message)


def run_register(step: StepRun) -> StepResult:
    request = {k: v for k, v in step.arguments.items() if v is not None}
    try:
        response = LocalRegistry().create_model_package(request)
    except sqlite3.OperationalError as exc:
        raise JobFailed(f"the registry database is busy: {exc}", THROTTLING) from exc
    except (RegistryError, ValueError) as exc:
        raise JobFailed(f"CreateModelPackage refused the request: {exc}") from exc
    properties = {**request, **response}
    properties.setdefault("ModelPackageStatus", "Completed")
    metadata = {"RegisterModel": {"Arn": response["ModelPackageArn"]},
                "ModelPackageVersion": response.get("ModelPackageVersion")}
    return StepResult(properties=properties, metadata=metadata)
