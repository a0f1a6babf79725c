"""Evaluate a definition's expressions and conditions while an execution runs.

The grammar (what an expression is, property paths, references) is the model's
(:mod:`mlops.definition.grammar`); this module gives expressions their values: parameters, execution
variables, step properties, property files, and the condition objects of a ConditionStep.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlops.definition.grammar import PathError, is_expression, parse_path, split_step_reference

# When a list is indexed by a string, the item whose name field equals it is meant (SageMaker's Outputs['x']).
NAME_FIELDS = ("OutputName", "InputName", "ChannelName", "MetricName", "Name", "PropertyFileName",
               "TrainingJobName")


class ExpressionError(ValueError):
    """An expression cannot be evaluated: names what and why."""


@dataclass
class Context:
    """Everything an expression may read while one execution runs."""

    parameters: dict[str, Any]
    execution: dict[str, Any]
    step_properties: Callable[[str], dict[str, Any]]
    property_file: Callable[[str, str], Any]
    read_s3_json: Callable[[str], Any] = field(default=lambda uri: None)


def walk(value: Any, tokens: list[str | int], where: str) -> Any:
    """Follow parsed path tokens through dicts and lists (lists may be indexed by an item's name)."""
    for token in tokens:
        if isinstance(value, dict):
            if token not in value:
                raise ExpressionError(f"{where}: no {token!r} (have {sorted(map(str, value))})")
            value = value[token]
        elif isinstance(value, list):
            if isinstance(token, int):
                if token >= len(value):
                    raise ExpressionError(f"{where}: index {token} out of range (length {len(value)})")
                value = value[token]
            else:
                matches = [item for item in value if isinstance(item, dict)
                           and any(item.get(f) == token for f in NAME_FIELDS)]
                if not matches:
                    raise ExpressionError(f"{where}: no item named {token!r}")
                value = matches[0]
        else:
            raise ExpressionError(f"{where}: cannot index {type(value).__name__} with {token!r}")
    return value


def to_text(value: Any) -> str:
    """How SageMaker turns a value into a string (Std:Join, hyperparameters): booleans lower-case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)


def resolve(value: Any, ctx: Context) -> Any:
    """Evaluate every expression inside ``value`` (dicts and lists are walked; literals are returned as is)."""
    if isinstance(value, dict):
        if is_expression(value):
            (function, body), = value.items()
            if function == "Get":
                return _get(body, ctx)
            if function == "Std:Join":
                return str(body.get("On", "")).join(to_text(resolve(v, ctx)) for v in body.get("Values", []))
            return _json_get(body, ctx)
        return {key: resolve(item, ctx) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item, ctx) for item in value]
    return value


def _get(reference: str, ctx: Context) -> Any:
    if not isinstance(reference, str):
        raise ExpressionError(f"Get expects a string, got {reference!r}")
    if reference.startswith("Parameters."):
        name = reference[len("Parameters."):]
        if name not in ctx.parameters:
            raise ExpressionError(f"{reference}: no parameter {name!r} (declared: {sorted(ctx.parameters)})")
        return ctx.parameters[name]
    if reference.startswith("Execution."):
        name = reference[len("Execution."):]
        if name not in ctx.execution:
            raise ExpressionError(f"{reference}: unknown execution variable (known: {sorted(ctx.execution)})")
        return ctx.execution[name]
    if reference.startswith("Steps."):
        try:
            step, tokens = split_step_reference(reference)
        except PathError as exc:
            raise ExpressionError(str(exc)) from None
        if tokens[:1] == ["PropertyFiles"] and len(tokens) == 2:
            return {"__property_file__": (step, tokens[1])}
        return walk(ctx.step_properties(step), tokens, reference)
    raise ExpressionError(f"cannot evaluate Get {reference!r}")


def _json_get(spec: dict[str, Any], ctx: Context) -> Any:
    path = spec.get("Path")
    if not isinstance(path, str):
        raise ExpressionError(f"Std:JsonGet needs a string Path, got {path!r}")
    if "PropertyFile" in spec:
        handle = resolve(spec["PropertyFile"], ctx)
        if not (isinstance(handle, dict) and "__property_file__" in handle):
            raise ExpressionError(f"Std:JsonGet PropertyFile must reference Steps.<step>.PropertyFiles.<name>, "
                                  f"got {spec['PropertyFile']!r}")
        step, name = handle["__property_file__"]
        document = ctx.property_file(step, name)
        where = f"property file {step}.{name}"
    elif "S3Uri" in spec:
        uri = resolve(spec["S3Uri"], ctx)
        document = ctx.read_s3_json(uri)
        where = str(uri)
    else:
        raise ExpressionError(f"Std:JsonGet needs PropertyFile or S3Uri, got keys {sorted(spec)}")
    try:
        tokens = parse_path(path)
    except PathError as exc:
        raise ExpressionError(f"Std:JsonGet on {where}: {exc}") from None
    return walk(document, tokens, f"{where} path {path!r}")


# --- conditions -------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _compare(left: Any, right: Any, kind: str) -> bool:
    a, b = _number(left), _number(right)
    if a is None or b is None:
        if kind == "Equals":
            return to_text(left) == to_text(right)
        raise ExpressionError(f"{kind}: cannot compare {left!r} with {right!r} (both must be numbers)")
    return {"Equals": a == b, "GreaterThan": a > b, "GreaterThanOrEqualTo": a >= b,
            "LessThan": a < b, "LessThanOrEqualTo": a <= b}[kind]


def evaluate_condition(condition: dict[str, Any], ctx: Context) -> bool:
    kind = condition.get("Type")
    if kind in ("Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo"):
        return _compare(resolve(condition["LeftValue"], ctx), resolve(condition["RightValue"], ctx), kind)
    if kind == "In":
        query = resolve(condition["QueryValue"], ctx)
        return any(_compare(query, resolve(v, ctx), "Equals") for v in condition.get("Values", []))
    if kind == "Not":
        return not evaluate_condition(condition["Condition"], ctx)
    if kind == "Or":
        return any(evaluate_condition(c, ctx) for c in condition.get("Conditions", []))
    if kind == "And":
        return all(evaluate_condition(c, ctx) for c in condition.get("Conditions", []))
    raise ExpressionError(f"unknown condition type {kind!r}")


def describe_condition(condition: dict[str, Any], ctx: Context) -> str:
    """Human-readable form with values, for logs and the step's metadata."""
    kind = condition.get("Type")
    if "LeftValue" in condition:
        left, right = resolve(condition["LeftValue"], ctx), resolve(condition["RightValue"], ctx)
        return f"{left!r} {kind} {right!r}"
    if kind == "In":
        return f"{resolve(condition['QueryValue'], ctx)!r} In {resolve(condition.get('Values', []), ctx)!r}"
    if kind == "Not":
        return f"Not({describe_condition(condition['Condition'], ctx)})"
    return f"{kind}(" + ", ".join(describe_condition(c, ctx) for c in condition.get("Conditions", [])) + ")"


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
