"""Validate a pipeline definition offline, at design time rather than at run time (aws/sagemaker-python-sdk #2554).

The published JSON schema of definitions lags the SDK, so each step's Arguments are checked against
the API input shapes botocore ships (CreateProcessingJob, CreateTrainingJob, ...):
1. pipeline expressions ({"Get": ...}, {"Std:Join": ...}, {"Std:JsonGet": ...}) are replaced by a value
   of the type the shape expects (a parameter's default where the expression reads a parameter, so a
   bad default instance type is caught), and type mismatches between expression and field are reported;
2. botocore's ParamValidator reports unknown keys, missing required fields and wrong types;
3. literal values are checked against what ParamValidator leaves out: enumerations (instance types,
   approval status, ...), maximum lengths and values, and patterns;
4. the graph: every referenced step, property path (against the Describe* output shapes), property
   file and parameter exists, DependsOn names exist, step names are unique, and there is no cycle.
"""

from __future__ import annotations

import datetime
import graphlib
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import botocore.session
from botocore.model import OperationModel, Shape
from botocore.validate import ParamValidator

EXPRESSION_KEYS = {"Get", "Std:Join", "Std:JsonGet"}
PARAMETER_TYPES = {"String": str, "Integer": int, "Float": (int, float), "Boolean": bool}
EXECUTION_PROPERTIES = {
    "PipelineExecutionId", "PipelineExecutionArn", "PipelineName", "PipelineArn", "StartDateTime",
    "CurrentDateTime",
}
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
CHECKED_WITHOUT_SHAPE = {"Condition", "Fail"}
PATH_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


@dataclass(frozen=True)
class Issue:
    """One problem: the step it is in ("<pipeline>" for top-level ones), where, and what is wrong."""

    step: str
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.severity.upper()} [{self.step}] {where}{self.message}"


@cache
def _service_model():
    return botocore.session.get_session().get_service_model("sagemaker")


def operation(name: str) -> OperationModel:
    return _service_model().operation_model(name)


@dataclass
class _Context:
    issues: list[Issue]
    parameters: dict[str, dict[str, Any]]
    steps: dict[str, dict[str, Any]]


def validate_definition(definition: dict[str, Any]) -> list[Issue]:
    """Every problem found in ``definition`` (errors and warnings); an empty list means it is valid."""
    issues: list[Issue] = []
    if not isinstance(definition, dict):
        return [Issue("<pipeline>", "", "the definition must be a JSON object")]
    parameters = _check_parameters(definition.get("Parameters", []), issues)
    steps = _collect_steps(definition.get("Steps"), issues)
    context = _Context(issues, parameters, steps)
    for name, step in steps.items():
        _check_step(name, step, context)
    _check_graph(context)
    return issues


def errors_only(issues: list[Issue]) -> list[Issue]:
    return [issue for issue in issues if issue.severity == "error"]


# ---------------------------------------------------------------- parameters and steps


def _check_parameters(parameters: Any, issues: list[Issue]) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = {}
    if not isinstance(parameters, list):
        issues.append(Issue("<pipeline>", "Parameters", "must be a list"))
        return declared
    for index, parameter in enumerate(parameters):
        path = f"Parameters[{index}]"
        if not isinstance(parameter, dict) or not isinstance(parameter.get("Name"), str):
            issues.append(Issue("<pipeline>", path, "a parameter needs a string Name"))
            continue
        name, kind = parameter["Name"], parameter.get("Type", "String")
        path = f"Parameters.{name}"
        if name in declared:
            issues.append(Issue("<pipeline>", path, "declared twice"))
        if kind not in PARAMETER_TYPES:
            issues.append(Issue("<pipeline>", path, f"Type {kind!r} is not one of {sorted(PARAMETER_TYPES)}"))
            kind = "String"
        default = parameter.get("DefaultValue")
        expected = PARAMETER_TYPES[kind]
        if default is not None and (not isinstance(default, expected) or (kind != "Boolean" and
                                                                            isinstance(default, bool))):
            issues.append(Issue("<pipeline>", path, f"DefaultValue {default!r} is not a {kind}"))
        enum = parameter.get("EnumValues")
        if enum is not None and default is not None and default not in enum:
            issues.append(Issue("<pipeline>", path, f"DefaultValue {default!r} is not one of its EnumValues {enum}"))
        declared[name] = {"Type": kind, "DefaultValue": default}
    return declared


def _collect_steps(steps: Any, issues: list[Issue], parent: str | None = None) -> dict[str, dict[str, Any]]:
    """Steps by name, condition branches included; ``_parent`` records the Condition step of a branch step."""
    found: dict[str, dict[str, Any]] = {}
    if not isinstance(steps, list):
        issues.append(Issue("<pipeline>", "Steps", "must be a list of steps"))
        return found
    for index, step in enumerate(steps):
        if not isinstance(step, dict) or not isinstance(step.get("Name"), str) or not step.get("Name"):
            issues.append(Issue("<pipeline>", f"Steps[{index}]", "a step needs a non-empty string Name"))
            continue
        name = step["Name"]
        if name in found:
            issues.append(Issue(name, "Name", "step name used more than once"))
        found[name] = {**step, "_parent": parent}
        if step.get("Type") == "Condition":
            arguments = step.get("Arguments") or {}
            for branch in ("IfSteps", "ElseSteps"):
                nested = _collect_steps(arguments.get(branch, []), issues, parent=name)
                for nested_name in nested:
                    if nested_name in found:
                        issues.append(Issue(nested_name, "Name", "step name used more than once"))
                found.update(nested)
    return found


def _check_step(name: str, step: dict[str, Any], context: _Context) -> None:
    kind = step.get("Type")
    arguments = step.get("Arguments")
    if not isinstance(arguments, dict):
        context.issues.append(Issue(name, "Arguments", "missing or not an object"))
        return
    for dependency in step.get("DependsOn", []) or []:
        if dependency not in context.steps:
            context.issues.append(Issue(name, "DependsOn", f"names step {dependency!r}, which does not exist"))
    for index, property_file in enumerate(step.get("PropertyFiles", []) or []):
        output_name = property_file.get("OutputName")
        outputs = _output_names(arguments)
        if output_name not in outputs:
            context.issues.append(Issue(name, f"PropertyFiles[{index}].OutputName",
                                        f"{output_name!r} is not one of the step's outputs {sorted(outputs)}"))
    if kind in STEP_OPERATIONS:
        _check_arguments(name, kind, arguments, context)
    elif kind == "Condition":
        _check_condition(name, arguments, context)
    elif kind == "Fail":
        message = arguments.get("ErrorMessage")
        if message is not None and not isinstance(message, str) and not _is_expression(message):
            context.issues.append(Issue(name, "Arguments.ErrorMessage", "must be a string or an expression"))
        _check_expressions(name, "Arguments", arguments, context)
    else:
        context.issues.append(Issue(name, "Type", f"step type {kind!r} is not checked against an API shape",
                                    severity="warning"))
        _check_expressions(name, "Arguments", arguments, context)


def _output_names(arguments: dict[str, Any]) -> set[str]:
    outputs = (arguments.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    return {o.get("OutputName") for o in outputs if isinstance(o, dict)}


def _check_arguments(name: str, kind: str, arguments: dict[str, Any], context: _Context) -> None:
    operation_name, name_member = STEP_OPERATIONS[kind]
    shape = operation(operation_name).input_shape
    resolved = _resolve(arguments, shape, "Arguments", name, context)
    if name_member and name_member not in resolved:
        resolved[name_member] = "placeholder-name"
    report = ParamValidator().validate(resolved, shape)
    if report.has_errors():
        for line in report.generate_report().splitlines():
            line = line.replace("parameter in input:", "parameter in Arguments:").replace("parameter input.", "parameter ")
            context.issues.append(Issue(name, f"Arguments ({operation_name})", line))


def _check_condition(name: str, arguments: dict[str, Any], context: _Context) -> None:
    conditions = arguments.get("Conditions")
    if not isinstance(conditions, list) or not conditions:
        context.issues.append(Issue(name, "Arguments.Conditions", "needs a non-empty list of conditions"))
        return
    for index, condition in enumerate(conditions):
        _check_one_condition(name, f"Arguments.Conditions[{index}]", condition, context)
    for branch in ("IfSteps", "ElseSteps"):
        if not isinstance(arguments.get(branch, []), list):
            context.issues.append(Issue(name, f"Arguments.{branch}", "must be a list of steps"))


def _check_one_condition(name: str, path: str, condition: Any, context: _Context) -> None:
    if not isinstance(condition, dict) or condition.get("Type") not in CONDITION_TYPES:
        kind = condition.get("Type") if isinstance(condition, dict) else condition
        context.issues.append(Issue(name, f"{path}.Type", f"{kind!r} is not one of {sorted(CONDITION_TYPES)}"))
        return
    kind = condition["Type"]
    required = {"Not": ("Condition",), "Or": ("Conditions",), "In": ("QueryValue", "Values")}.get(
        kind, ("LeftValue", "RightValue"))
    for key in required:
        if key not in condition:
            context.issues.append(Issue(name, path, f"a {kind} condition needs {key!r}"))
    if kind == "Not" and "Condition" in condition:
        _check_one_condition(name, f"{path}.Condition", condition["Condition"], context)
    elif kind == "Or":
        for index, nested in enumerate(condition.get("Conditions") or []):
            _check_one_condition(name, f"{path}.Conditions[{index}]", nested, context)
    else:
        _check_expressions(name, path, condition, context)


# ---------------------------------------------------------------- expressions against shapes


def _is_expression(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in EXPRESSION_KEYS


def _resolve(value: Any, shape: Shape | None, path: str, step: str, context: _Context) -> Any:
    """A copy of ``value`` with expressions replaced by typed placeholders; literals checked on the way."""
    if _is_expression(value):
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
    _check_literal(value, shape, path, step, context.issues)
    return value


def _check_literal(value: Any, shape: Shape, path: str, step: str, issues: list[Issue], origin: str = "") -> None:
    """What ParamValidator does not check: enums, maximum length/value, patterns."""
    metadata = shape.metadata
    if shape.type_name == "string" and isinstance(value, str):
        enum = getattr(shape, "enum", None) or metadata.get("enum")
        if enum and value not in enum:
            shown = ", ".join(enum[:12]) + (", ..." if len(enum) > 12 else "")
            issues.append(Issue(step, path, f"{value!r}{origin} is not a valid {shape.name} (one of: {shown})"))
        if "max" in metadata and len(value) > metadata["max"]:
            issues.append(Issue(step, path, f"{value[:40]!r}{origin} is longer than {metadata['max']} characters"))
        pattern = metadata.get("pattern")
        if pattern and not enum:
            compiled = _compile(pattern)
            if compiled is not None and not compiled.search(value):
                issues.append(Issue(step, path, f"{value!r}{origin} does not match the pattern {pattern}"))
    elif shape.type_name in ("integer", "long", "float", "double") and isinstance(value, (int, float)) \
            and not isinstance(value, bool):
        if "max" in metadata and value > metadata["max"]:
            issues.append(Issue(step, path, f"{value!r}{origin} is above the maximum {metadata['max']}"))
        if "min" in metadata and value < metadata["min"]:
            issues.append(Issue(step, path, f"{value!r}{origin} is below the minimum {metadata['min']}"))


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
    if produced is not None and not _compatible(produced, kind):
        context.issues.append(Issue(step, path, f"{_describe(expression)} gives a {produced} value but the field "
                                                f"takes a {kind} value"))
        return _placeholder(shape)
    key, body = next(iter(expression.items()))
    if key == "Get" and isinstance(body, str) and body.startswith("Parameters."):
        parameter = context.parameters.get(body.split(".", 1)[1])
        default = parameter and parameter.get("DefaultValue")
        if default is not None and _compatible(parameter["Type"], kind):
            value = str(default) if kind == "string" else default
            origin = f" (default of {body.split('.', 1)[1]})"
            _check_literal(value, shape, path, step, context.issues, origin)
            return value
    return _placeholder(shape)


def _compatible(produced: str, kind: str) -> bool:
    accepts = {
        "string": {"String", "string"},
        "integer": {"Integer", "integer", "long"},
        "long": {"Integer", "integer", "long"},
        "float": {"Integer", "Float", "integer", "long", "float", "double"},
        "double": {"Integer", "Float", "integer", "long", "float", "double"},
        "boolean": {"Boolean", "boolean"},
    }
    return produced in accepts.get(kind, {produced})


def _describe(expression: dict[str, Any]) -> str:
    key, body = next(iter(expression.items()))
    return f"{key} {body}" if key == "Get" else key


def _check_expressions(step: str, path: str, value: Any, context: _Context) -> None:
    """Check every expression inside an untyped structure (conditions, Fail messages, unknown steps)."""
    if _is_expression(value):
        _check_expression(value, path, step, context)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_expressions(step, f"{path}.{key}", item, context)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_expressions(step, f"{path}[{index}]", item, context)


def _check_expression(expression: dict[str, Any], path: str, step: str, context: _Context) -> str | None:
    """Validate an expression's form and references; return the type it yields when known."""
    key, body = next(iter(expression.items()))
    if key == "Get":
        if not isinstance(body, str):
            context.issues.append(Issue(step, path, "Get needs a string reference"))
            return None
        return _check_reference(body, path, step, context)
    if key == "Std:Join":
        if not isinstance(body, dict) or not isinstance(body.get("On"), str) or not isinstance(body.get("Values"),
                                                                                                 list):
            context.issues.append(Issue(step, path, "Std:Join needs 'On' (a string) and 'Values' (a list)"))
            return "String"
        for index, item in enumerate(body["Values"]):
            if _is_expression(item):
                _check_expression(item, f"{path}.Std:Join.Values[{index}]", step, context)
        return "String"
    # Std:JsonGet
    if not isinstance(body, dict) or not isinstance(body.get("Path"), str) or not body["Path"]:
        context.issues.append(Issue(step, path, "Std:JsonGet needs a non-empty 'Path'"))
        return None
    property_file = body.get("PropertyFile")
    if property_file is not None:
        if _is_expression(property_file):
            _check_expression(property_file, f"{path}.Std:JsonGet.PropertyFile", step, context)
        else:
            context.issues.append(Issue(step, f"{path}.Std:JsonGet.PropertyFile",
                                        "must be {'Get': 'Steps.<step>.PropertyFiles.<name>'}"))
    elif "S3Uri" not in body:
        context.issues.append(Issue(step, path, "Std:JsonGet needs a 'PropertyFile' or an 'S3Uri'"))
    return None


def _check_reference(reference: str, path: str, step: str, context: _Context) -> str | None:
    """``Parameters.X``, ``Execution.X`` or ``Steps.<name>.<property path>``; returns the yielded type."""
    root, _, rest = reference.partition(".")
    if root == "Parameters":
        parameter = context.parameters.get(rest)
        if parameter is None:
            context.issues.append(Issue(step, path, f"parameter {rest!r} is not declared in Parameters"))
            return None
        return parameter["Type"]
    if root == "Execution":
        if rest not in EXECUTION_PROPERTIES:
            context.issues.append(Issue(step, path, f"Execution.{rest} is not one of {sorted(EXECUTION_PROPERTIES)}"))
            return None
        return "String"
    if root == "Steps":
        target_name, _, property_path = rest.partition(".")
        target = context.steps.get(target_name)
        if target is None:
            context.issues.append(Issue(step, path, f"{reference!r} names step {target_name!r}, which does not exist"))
            return None
        if target_name == step:
            context.issues.append(Issue(step, path, f"{reference!r}: a step cannot read its own properties"))
            return None
        return _check_property_path(target, property_path, reference, path, step, context)
    context.issues.append(Issue(step, path, f"{reference!r}: references start with Parameters., Execution. or Steps."))
    return None


def _check_property_path(target: dict[str, Any], property_path: str, reference: str, path: str, step: str,
                         context: _Context) -> str | None:
    tokens = _tokens(property_path)
    if tokens is None or not tokens:
        context.issues.append(Issue(step, path, f"{reference!r}: cannot parse the property path"))
        return None
    kind = target.get("Type")
    if tokens[0] == "PropertyFiles":
        names = {pf.get("PropertyFileName") for pf in target.get("PropertyFiles", []) or []}
        if len(tokens) != 2 or tokens[1] not in names:
            context.issues.append(Issue(step, path, f"{reference!r}: step {target['Name']!r} declares no such property "
                                                    f"file (it has {sorted(n for n in names if n)})"))
        return None
    if kind not in PROPERTY_OPERATIONS:
        return None  # Condition (Outcome), Lambda/Callback (OutputParameters): not described by an API shape
    for operation_name in PROPERTY_OPERATIONS[kind]:
        shape = operation(operation_name).output_shape
        if isinstance(tokens[0], str) and tokens[0] in shape.members:
            return _walk_property(shape, tokens, target, reference, path, step, context)
    context.issues.append(Issue(step, path, f"{reference!r}: {tokens[0]!r} is not a property of a {kind} step"))
    return None


def _tokens(property_path: str) -> list[str | int] | None:
    tokens: list[str | int] = []
    position = 0
    while position < len(property_path):
        match = PATH_TOKEN.match(property_path, position)
        if not match or match.end() == position:
            return None
        name, index, single, double = match.groups()
        tokens.append(int(index) if index is not None else name if name is not None else
                      single if single is not None else double)
        position = match.end()
    return tokens


def _walk_property(shape: Shape, tokens: list[str | int], target: dict[str, Any], reference: str, path: str,
                   step: str, context: _Context) -> str | None:
    arguments: Any = target.get("Arguments")
    where: list[str] = []
    for position, token in enumerate(tokens):
        is_member = position == 0 or (isinstance(token, str) and shape.type_name == "structure")
        if shape.type_name == "structure" and is_member and isinstance(token, str):
            if token not in shape.members:
                context.issues.append(Issue(step, path, f"{reference!r}: {shape.name} has no member {token!r}"))
                return None
            shape = shape.members[token]
            arguments = arguments.get(token) if isinstance(arguments, dict) else None
        elif shape.type_name == "list":
            if isinstance(token, str) and isinstance(arguments, list):
                names = {v for item in arguments if isinstance(item, dict) for k, v in item.items()
                         if k.endswith("Name") and isinstance(v, str)}
                if names and token not in names:
                    context.issues.append(Issue(step, path, f"{reference!r}: no item named {token!r} in "
                                                            f"{'.'.join(where)} (has {sorted(names)})"))
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
            context.issues.append(Issue(step, path, f"{reference!r}: cannot index {shape.name} with {token!r}"))
            return None
        where.append(str(token))
    if shape.type_name in ("structure", "list", "map"):
        return shape.type_name
    return shape.type_name


# ---------------------------------------------------------------- graph


def _references(value: Any) -> set[str]:
    """Names of steps an argument tree reads from (Get Steps.<name>..., JsonGet property files)."""
    found: set[str] = set()
    if isinstance(value, dict):
        if _is_expression(value) and "Get" in value and isinstance(value["Get"], str) and \
                value["Get"].startswith("Steps."):
            found.add(value["Get"].split(".")[1])
        for item in value.values():
            found |= _references(item)
    elif isinstance(value, list):
        for item in value:
            found |= _references(item)
    return found


def _check_graph(context: _Context) -> None:
    graph: dict[str, set[str]] = {}
    for name, step in context.steps.items():
        arguments = dict(step.get("Arguments") or {})
        if step.get("Type") == "Condition":  # branch steps are nodes of their own
            arguments.pop("IfSteps", None)
            arguments.pop("ElseSteps", None)
        predecessors = {ref for ref in _references(arguments) if ref in context.steps and ref != name}
        predecessors |= {d for d in step.get("DependsOn", []) or [] if d in context.steps}
        if step.get("_parent"):
            predecessors.add(step["_parent"])
        graph[name] = predecessors
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        context.issues.append(Issue("<pipeline>", "Steps", f"steps depend on each other in a cycle: {cycle}"))
