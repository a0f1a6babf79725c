"""Validate a pipeline definition offline, at design time rather than at run time (aws/sagemaker-python-sdk #2554).

The model (:mod:`mlops.definition.model`) already reports the graph: step names, parameters, that every
reference names something declared, DependsOn, cycles. The published JSON schema of definitions lags the
SDK, so on top of that each step's Arguments are checked against the API shapes botocore ships:
1. pipeline expressions are replaced by a value of the type the field expects (a parameter's default where
   the expression reads a parameter, so a bad default instance type is caught), and type mismatches between
   expression and field are reported;
2. botocore's ParamValidator reports unknown keys, missing required fields and wrong types;
3. literal values are checked against what ParamValidator leaves out: enumerations (instance types,
   approval status, ...), maximum lengths and values, and patterns;
4. property paths (``Steps.S.<path>``) are checked against the Describe* output shapes, and property files
   against the steps that declare them.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, Shape
from botocore.validate import ParamValidator

from mlops.definition.grammar import PathError, is_expression, split_reference, split_step_reference
from mlops.definition.model import Definition, Issue, Step, parse

CONDITION_TYPES = {"Equals", "GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo", "In", "Not",
                   "Or"}
# Step type -> (create operation, placeholder name member the pipeline fills in at run time)
STEP_OPERATIONS = {
    "Processing": ("CreateProcessingJob", "ProcessingJobName"),
    "Training": ("CreateTrainingJob", "TrainingJobName"),
    "Tuning": ("CreateHyperParameterTuningJob", "HyperParameterTuningJobName"),
    "Transform": ("CreateTransformJob", "TransformJobName"),
    "Model": ("CreateModel", "ModelName"),
    "RegisterModel": ("CreateModelPackage", None),
}
# Step type -> output shapes whose members a step's properties expose (Steps.<name>.<path>)
PROPERTY_OPERATIONS = {
    "Processing": ("DescribeProcessingJob",),
    "Training": ("DescribeTrainingJob",),
    "Tuning": ("DescribeHyperParameterTuningJob", "ListTrainingJobsForHyperParameterTuningJob"),
    "Transform": ("DescribeTransformJob",),
    "Model": ("DescribeModel",),
    "RegisterModel": ("DescribeModelPackage",),
}
ACCEPTS = {
    "string": {"String", "string"},
    "integer": {"Integer", "integer", "long"},
    "long": {"Integer", "integer", "long"},
    "float": {"Integer", "Float", "integer", "long", "float", "double"},
    "double": {"Integer", "Float", "integer", "long", "float", "double"},
    "boolean": {"Boolean", "boolean"},
}


@cache
def _service_model():
    return botocore.session.get_session().get_service_model("sagemaker")


def operation(name: str) -> OperationModel:
    return _service_model().operation_model(name)


@dataclass
class _Context:
    definition: Definition
    issues: list[Issue]

    def add(self, step: str, path: str, message: str, severity: str = "error") -> None:
        self.issues.append(Issue(step, path, message, severity))


def validate_definition(definition: Any) -> list[Issue]:
    """Every problem found in ``definition`` (errors and warnings); an empty list means it is valid."""
    model = parse(definition)
    context = _Context(model, list(model.issues))
    for step in model.steps.values():
        _check_step(step, context)
    return context.issues


def errors_only(issues: list[Issue]) -> list[Issue]:
    return [issue for issue in issues if issue.severity == "error"]


# ---------------------------------------------------------------- steps


def _check_step(step: Step, context: _Context) -> None:
    arguments = step.arguments
    for index, property_file in enumerate(step.property_files):
        output_name = property_file.get("OutputName") if isinstance(property_file, dict) else None
        outputs = _output_names(arguments)
        if output_name not in outputs:
            context.add(step.name, f"PropertyFiles[{index}].OutputName",
                        f"{output_name!r} is not one of the step's outputs {sorted(outputs)}")
    if step.type in STEP_OPERATIONS:
        _check_arguments(step, context)
    elif step.type == "Condition":
        _check_condition(step, context)
    elif step.type == "Fail":
        message = arguments.get("ErrorMessage")
        if message is not None and not isinstance(message, str) and not is_expression(message):
            context.add(step.name, "Arguments.ErrorMessage", "must be a string or an expression")
        _check_expressions(step.name, "Arguments", arguments, context)
    else:
        context.add(step.name, "Type", f"step type {step.type!r} is not checked against an API shape", "warning")
        _check_expressions(step.name, "Arguments", arguments, context)


def _output_names(arguments: dict[str, Any]) -> set[str]:
    outputs = (arguments.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    return {o.get("OutputName") for o in outputs if isinstance(o, dict)}


def _check_arguments(step: Step, context: _Context) -> None:
    operation_name, name_member = STEP_OPERATIONS[step.type]
    shape = operation(operation_name).input_shape
    resolved = _resolve(step.arguments, shape, "Arguments", step.name, context)
    if name_member and name_member not in resolved:
        resolved[name_member] = "placeholder-name"
    report = ParamValidator().validate(resolved, shape)
    if report.has_errors():
        for line in report.generate_report().splitlines():
            line = line.replace("parameter in input:", "parameter in Arguments:").replace("parameter input.", "parameter ")
            context.add(step.name, f"Arguments ({operation_name})", line)


def _check_condition(step: Step, context: _Context) -> None:
    conditions = step.arguments.get("Conditions")
    if not isinstance(conditions, list) or not conditions:
        context.add(step.name, "Arguments.Conditions", "needs a non-empty list of conditions")
        return
    for index, condition in enumerate(conditions):
        _check_one_condition(step.name, f"Arguments.Conditions[{index}]", condition, context)
    for branch in ("IfSteps", "ElseSteps"):
        if not isinstance(step.arguments.get(branch, []), list):
            context.add(step.name, f"Arguments.{branch}", "must be a list of steps")


def _check_one_condition(name: str, path: str, condition: Any, context: _Context) -> None:
    if not isinstance(condition, dict) or condition.get("Type") not in CONDITION_TYPES:
        kind = condition.get("Type") if isinstance(condition, dict) else condition
        context.add(name, f"{path}.Type", f"{kind!r} is not one of {sorted(CONDITION_TYPES)}")
        return
    kind = condition["Type"]
    required = {"Not": ("Condition",), "Or": ("Conditions",), "In": ("QueryValue", "Values")}.get(
        kind, ("LeftValue", "RightValue"))
    for key in required:
        if key not in condition:
            context.add(name, path, f"a {kind} condition needs {key!r}")
    if kind == "Not" and "Condition" in condition:
        _check_one_condition(name, f"{path}.Condition", condition["Condition"], context)
    elif kind == "Or":
        for index, nested in enumerate(condition.get("Conditions") or []):
            _check_one_condition(name, f"{path}.Conditions[{index}]", nested, context)
    else:
        _check_expressions(name, path, condition, context)


# ---------------------------------------------------------------- expressions against shapes


def _resolve(value: Any, shape: Shape | None, path: str, step: str, context: _Context) -> Any:
    """A copy of ``value`` with expressions replaced by typed placeholders; literals checked on the way."""
    if is_expression(value):
        return _substitute(value, shape, path, step, context)
    if shape is None:
        return value
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {key: _resolve(item, shape.members.get(key), f"{path}.{key}", step, context)
                for key, item in value.items()}
    if kind == "list" and isinstance(value, list):
        return [_resolve(item, shape.member, f"{path}[{i}]", step, context) for i, item in enumerate(value)]
    if kind == "map" and isinstance(value, dict):
        return {key: _resolve(item, shape.value, f"{path}.{key}", step, context) for key, item in value.items()}
    _check_literal(value, shape, path, step, context)
    return value


def _check_literal(value: Any, shape: Shape, path: str, step: str, context: _Context, origin: str = "") -> None:
    """What ParamValidator does not check: enums, maximum length/value, patterns."""
    metadata = shape.metadata
    if shape.type_name == "string" and isinstance(value, str):
        enum = getattr(shape, "enum", None) or metadata.get("enum")
        if enum and value not in enum:
            shown = ", ".join(enum[:12]) + (", ..." if len(enum) > 12 else "")
            context.add(step, path, f"{value!r}{origin} is not a valid {shape.name} (one of: {shown})")
        if "max" in metadata and len(value) > metadata["max"]:
            context.add(step, path, f"{value[:40]!r}{origin} is longer than {metadata['max']} characters")
        pattern = metadata.get("pattern")
        if pattern and not enum:
            compiled = _compile(pattern)
            if compiled is not None and not compiled.search(value):
                context.add(step, path, f"{value!r}{origin} does not match the pattern {pattern}")
    elif shape.type_name in ("integer", "long", "float", "double") and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        if "max" in metadata and value > metadata["max"]:
            context.add(step, path, f"{value!r}{origin} is above the maximum {metadata['max']}")
        if "min" in metadata and value < metadata["min"]:
            context.add(step, path, f"{value!r}{origin} is below the minimum {metadata['min']}")


@cache
def _compile(pattern: str) -> re.Pattern | None:
    try:
        return re.compile(pattern)
    except re.error:  # a Java-only construct: skip rather than guess
        return None


def _placeholder(shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "string":
        enum = getattr(shape, "enum", None)
        return enum[0] if enum else "x" * max(int(shape.metadata.get("min", 1)), 1)
    if kind in ("integer", "long"):
        return max(int(shape.metadata.get("min", 1)), 1)
    if kind in ("float", "double"):
        return float(shape.metadata.get("min", 1.0))
    if kind == "boolean":
        return True
    if kind == "timestamp":
        return datetime.datetime(2020, 1, 1)
    if kind == "blob":
        return b""
    if kind == "list":
        return []
    return {}


def _substitute(expression: dict[str, Any], shape: Shape | None, path: str, step: str, context: _Context) -> Any:
    """Check the expression itself, then return a value of the field's type."""
    produced = _check_expression(expression, path, step, context)
    if shape is None:
        return "placeholder"
    kind = shape.type_name
    if produced is not None and produced not in ACCEPTS.get(kind, {produced}):
        context.add(step, path, f"{_describe(expression)} gives a {produced} value but the field takes a {kind} value")
        return _placeholder(shape)
    key, body = next(iter(expression.items()))
    if key == "Get" and isinstance(body, str) and body.startswith("Parameters."):
        parameter = context.definition.parameters.get(body.split(".", 1)[1])
        if parameter is not None and parameter.default is not None and parameter.type in ACCEPTS.get(kind, ()):
            value = str(parameter.default) if kind == "string" else parameter.default
            _check_literal(value, shape, path, step, context, f" (default of {parameter.name})")
            return value
    return _placeholder(shape)


def _describe(expression: dict[str, Any]) -> str:
    key, body = next(iter(expression.items()))
    return f"{key} {body}" if key == "Get" else key


def _check_expressions(step: str, path: str, value: Any, context: _Context) -> None:
    """Check every expression inside an untyped structure (conditions, Fail messages, unknown steps)."""
    if is_expression(value):
        _check_expression(value, path, step, context)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_expressions(step, f"{path}.{key}", item, context)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_expressions(step, f"{path}[{index}]", item, context)


def _check_expression(expression: dict[str, Any], path: str, step: str, context: _Context) -> str | None:
    """Validate an expression's form; return the type it yields when known (references: see the model)."""
    key, body = next(iter(expression.items()))
    if key == "Get":
        return _reference_type(body, path, step, context) if isinstance(body, str) else None
    if key == "Std:Join":
        if not isinstance(body, dict) or not isinstance(body.get("On"), str) or not isinstance(body.get("Values"),
                                                                                                 list):
            context.add(step, path, "Std:Join needs 'On' (a string) and 'Values' (a list)")
            return "String"
        for index, item in enumerate(body["Values"]):
            if is_expression(item):
                _check_expression(item, f"{path}.Std:Join.Values[{index}]", step, context)
        return "String"
    # Std:JsonGet
    if not isinstance(body, dict) or not isinstance(body.get("Path"), str) or not body["Path"]:
        context.add(step, path, "Std:JsonGet needs a non-empty 'Path'")
        return None
    property_file = body.get("PropertyFile")
    if property_file is not None:
        if is_expression(property_file):
            _check_expression(property_file, f"{path}.Std:JsonGet.PropertyFile", step, context)
        else:
            context.add(step, f"{path}.Std:JsonGet.PropertyFile", "must be {'Get': 'Steps.<step>.PropertyFiles.<name>'}")
    elif "S3Uri" not in body:
        context.add(step, path, "Std:JsonGet needs a 'PropertyFile' or an 'S3Uri'")
    return None


def _reference_type(reference: str, path: str, step: str, context: _Context) -> str | None:
    """The type a reference yields; unknown names are the model's issues already, so they yield None here."""
    try:
        root, rest = split_reference(reference)
        if root == "Parameters":
            parameter = context.definition.parameters.get(rest)
            return parameter.type if parameter else None
        if root == "Execution":
            return "String"
        target_name, tokens = split_step_reference(reference)
    except PathError:
        return None
    target = context.definition.steps.get(target_name)
    if target is None or target_name == step or not tokens:
        return None
    return _property_type(target, tokens, reference, path, step, context)


def _property_type(target: Step, tokens: list[str | int], reference: str, path: str, step: str,
                   context: _Context) -> str | None:
    if tokens[0] == "PropertyFiles":
        names = {pf.get("PropertyFileName") for pf in target.property_files if isinstance(pf, dict)}
        if len(tokens) != 2 or tokens[1] not in names:
            context.add(step, path, f"{reference!r}: step {target.name!r} declares no such property file "
                                    f"(it has {sorted(n for n in names if n)})")
        return None
    if target.type not in PROPERTY_OPERATIONS:
        return None  # Condition (Outcome), Lambda/Callback (OutputParameters): not described by an API shape
    for operation_name in PROPERTY_OPERATIONS[target.type]:
        shape = operation(operation_name).output_shape
        if isinstance(tokens[0], str) and tokens[0] in shape.members:
            return _walk_property(shape, tokens, target, reference, path, step, context)
    context.add(step, path, f"{reference!r}: {tokens[0]!r} is not a property of a {target.type} step")
    return None


def _walk_property(shape: Shape, tokens: list[str | int], target: Step, reference: str, path: str, step: str,
                   context: _Context) -> str | None:
    """Follow the path through the output shape, and through the target's arguments where lists are named."""
    arguments: Any = target.arguments
    where: list[str] = []
    for position, token in enumerate(tokens):
        is_member = position == 0 or (isinstance(token, str) and shape.type_name == "structure")
        if shape.type_name == "structure" and is_member and isinstance(token, str):
            if token not in shape.members:
                context.add(step, path, f"{reference!r}: {shape.name} has no member {token!r}")
                return None
            shape = shape.members[token]
            arguments = arguments.get(token) if isinstance(arguments, dict) else None
        elif shape.type_name == "list":
            if isinstance(token, str) and isinstance(arguments, list):
                names = {v for item in arguments if isinstance(item, dict) for k, v in item.items()
                         if k.endswith("Name") and isinstance(v, str)}
                if names and token not in names:
                    context.add(step, path, f"{reference!r}: no item named {token!r} in {'.'.join(where)} "
                                            f"(has {sorted(names)})")
                    return None
                arguments = next((item for item in arguments if isinstance(item, dict) and token in item.values()),
                                 None)
            else:
                arguments = None
            shape = shape.member
        elif shape.type_name == "map":
            shape = shape.value
            arguments = arguments.get(token) if isinstance(arguments, dict) else None
        else:
            context.add(step, path, f"{reference!r}: cannot index {shape.name} with {token!r}")
            return None
        where.append(str(token))
    return shape.type_name
