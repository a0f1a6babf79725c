"""One typed model of a pipeline definition JSON, shared by the CLI, the validator and the local executor.

:func:`parse` reads a definition the way SageMaker builds its graph and never stops at the first problem:
- steps, condition branches included (a step in a ConditionStep's IfSteps/ElseSteps runs after that step,
  and only on its branch);
- parameters, with their declared types, defaults and EnumValues;
- every reference (``Get Parameters.X``, ``Execution.X``, ``Steps.S.<path>``), which must name something
  declared;
- the graph: a step waits for its ``DependsOn`` and for every step its arguments read; a cycle is refused
  (graphlib).

Every problem is an :class:`Issue`; :meth:`Definition.check` raises :class:`DefinitionError` naming them.
The validator adds what needs the API shapes on top (see :mod:`mlops.definition.validate`).
"""

from __future__ import annotations

import graphlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mlops.definition.grammar import (
    EXECUTION_VARIABLES,
    PathError,
    references,
    split_reference,
    split_step_reference,
)

PARAMETER_TYPES = ("String", "Integer", "Float", "Boolean")
PIPELINE = "<pipeline>"  # the "step" of issues that concern the definition as a whole


class DefinitionError(ValueError):
    """A definition, or a parameter value for it, that cannot be used; says where and what was expected."""


@dataclass(frozen=True)
class Issue:
    """One problem: the step it is in (``<pipeline>`` for top-level ones), where, and what is wrong."""

    step: str
    path: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.severity.upper()} [{self.step}] {where}{self.message}"


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Any = None  # None: no DefaultValue (a value must be passed)
    enum_values: tuple[Any, ...] | None = None

    def convert(self, value: Any) -> Any:
        """A --param string (or a Python value) as this parameter's type and within its EnumValues."""
        converted = convert_value(self.name, self.type, value)
        if self.enum_values and converted not in self.enum_values:
            raise DefinitionError(f"parameter {self.name}={converted!r} is not one of {list(self.enum_values)}")
        return converted


@dataclass
class Step:
    name: str
    type: str
    arguments: dict[str, Any]
    raw: dict[str, Any]
    depends_on: list[str] = field(default_factory=list)
    cache_enabled: bool = False
    cache_expire_after: str | None = None
    retry_policies: list[dict[str, Any]] = field(default_factory=list)
    property_files: list[dict[str, Any]] = field(default_factory=list)
    condition_parent: str | None = None  # the ConditionStep whose branch holds this step
    condition_branch: bool | None = None  # True: IfSteps, False: ElseSteps
    upstream: set[str] = field(default_factory=set)

    @property
    def own_arguments(self) -> dict[str, Any]:
        """The arguments that belong to this step: a ConditionStep's branches are steps of their own."""
        if self.type != "Condition":
            return self.arguments
        return {k: v for k, v in self.arguments.items() if k not in ("IfSteps", "ElseSteps")}


@dataclass
class Definition:
    raw: dict[str, Any]
    steps: dict[str, Step]
    parameters: dict[str, Parameter]
    issues: list[Issue]

    def check(self) -> Definition:
        """This definition, or a :class:`DefinitionError` listing every problem :func:`parse` found."""
        errors = [issue for issue in self.issues if issue.severity == "error"]
        if errors:
            shown = "; ".join(f"[{i.step}] {i.path + ': ' if i.path else ''}{i.message}" for i in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            raise DefinitionError(f"the pipeline definition is not valid: {shown}{more}")
        return self

    def order(self) -> list[str]:
        """A topological order; independent steps keep their definition order."""
        sorter = graphlib.TopologicalSorter({name: step.upstream for name, step in self.steps.items()})
        sorter.prepare()
        ordered: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=list(self.steps).index)
            ordered.extend(ready)
            sorter.done(*ready)
        return ordered

    def downstream(self, name: str) -> set[str]:
        """Every step that (transitively) waits for ``name``."""
        found: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {s.name for s in self.steps.values() if s.upstream & frontier} - found
            found |= frontier
        return found

    def resolve_parameters(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Defaults with ``overrides`` applied, each converted to its declared type.

        An unknown name, a value of the wrong type or outside EnumValues, or a parameter with neither a default
        nor a value is a :class:`DefinitionError` that names the valid parameters.
        """
        unknown = sorted(set(overrides) - set(self.parameters))
        if unknown:
            valid = ", ".join(f"{p.name} ({p.type})" for p in self.parameters.values()) or "none"
            raise DefinitionError(f"unknown parameter(s) {', '.join(unknown)}: not a parameter of this pipeline; "
                                  f"its parameters are: {valid}")
        values: dict[str, Any] = {}
        for name, parameter in self.parameters.items():
            if name in overrides:
                values[name] = parameter.convert(overrides[name])
            elif parameter.default is not None:
                values[name] = parameter.convert(parameter.default)
            else:
                raise DefinitionError(f"parameter {name} ({parameter.type}) has no default: pass --param {name}=VALUE")
        return values


def convert_value(name: str, kind: str, value: Any) -> Any:
    """A value as the parameter type ``kind`` (strings as SageMaker reads them), or a clear error."""
    text = str(value).strip()
    problem = f"parameter {name} is {kind}, got {value!r}"
    if kind == "String":
        if not isinstance(value, str):
            raise DefinitionError(f"{problem}: expected a string")
        return value
    if kind == "Integer":
        if isinstance(value, bool) or not (isinstance(value, int) or re.fullmatch(r"[+-]?\d+", text)):
            raise DefinitionError(f"{problem}: expected a whole number such as 3")
        return int(text)
    if kind == "Float":
        try:
            number = float(text) if not isinstance(value, bool) else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise DefinitionError(f"{problem}: expected a finite number such as 0.5")
        return number
    if kind == "Boolean":
        if isinstance(value, bool):
            return value
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise DefinitionError(f"{problem}: expected true or false")
    raise DefinitionError(f"parameter {name}: unknown Type {kind!r} (expected one of {', '.join(PARAMETER_TYPES)})")


def iter_steps(steps: Any, parent: str | None = None,
               branch: bool | None = None) -> Iterator[tuple[dict[str, Any], str | None, bool | None]]:
    """Every raw step, condition branches included, with its ConditionStep and branch (True: IfSteps)."""
    for step in steps if isinstance(steps, list) else []:
        yield step, parent, branch
        if isinstance(step, dict) and step.get("Type") == "Condition":
            arguments = step.get("Arguments") if isinstance(step.get("Arguments"), dict) else {}
            for key, flag in (("IfSteps", True), ("ElseSteps", False)):
                yield from iter_steps(arguments.get(key) or [], step.get("Name"), flag)


def parse(raw: Any) -> Definition:
    """Read ``raw`` into the model, collecting every problem as an :class:`Issue` (see :meth:`Definition.check`)."""
    issues: list[Issue] = []
    if not isinstance(raw, dict):
        return Definition({}, {}, {}, [Issue(PIPELINE, "", "the definition must be a JSON object")])
    parameters = _parameters(raw.get("Parameters", []), issues)
    steps = _steps(raw.get("Steps"), issues)
    for step in steps.values():
        _link(step, steps, parameters, issues)
    _check_cycles(steps, issues)
    return Definition(raw=raw, steps=steps, parameters=parameters, issues=issues)


def _parameters(specs: Any, issues: list[Issue]) -> dict[str, Parameter]:
    declared: dict[str, Parameter] = {}
    if not isinstance(specs, list):
        issues.append(Issue(PIPELINE, "Parameters", "must be a list"))
        return declared
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("Name"), str) or not spec["Name"]:
            issues.append(Issue(PIPELINE, f"Parameters[{index}]", "a parameter needs a string Name"))
            continue
        name, kind = spec["Name"], spec.get("Type", "String")
        path = f"Parameters.{name}"
        if name in declared:
            issues.append(Issue(PIPELINE, path, "declared twice"))
        if kind not in PARAMETER_TYPES:
            issues.append(Issue(PIPELINE, path, f"Type {kind!r} is not one of {', '.join(PARAMETER_TYPES)}"))
            kind = "String"
        default = spec.get("DefaultValue")
        expected = {"String": (str,), "Integer": (int,), "Float": (int, float), "Boolean": (bool,)}[kind]
        if default is not None and (not isinstance(default, expected) or
                                    (kind != "Boolean" and isinstance(default, bool))):
            issues.append(Issue(PIPELINE, path, f"DefaultValue {default!r} is not a {kind}"))
        enum = spec.get("EnumValues")
        if enum is not None and not isinstance(enum, list):
            issues.append(Issue(PIPELINE, path, "EnumValues must be a list"))
            enum = None
        if enum is not None and default is not None and default not in enum:
            issues.append(Issue(PIPELINE, path, f"DefaultValue {default!r} is not one of its EnumValues {enum}"))
        declared[name] = Parameter(name, kind, default, tuple(enum) if enum is not None else None)
    return declared


def _steps(raw_steps: Any, issues: list[Issue]) -> dict[str, Step]:
    steps: dict[str, Step] = {}
    if not isinstance(raw_steps, list):
        issues.append(Issue(PIPELINE, "Steps", "must be a list of steps"))
        return steps
    for index, (raw, parent, branch) in enumerate(iter_steps(raw_steps)):
        if not isinstance(raw, dict) or not isinstance(raw.get("Name"), str) or not raw["Name"]:
            issues.append(Issue(PIPELINE, f"Steps[{index}]", f"a step needs a non-empty string Name: {str(raw)[:80]}"))
            continue
        name = raw["Name"]
        if name in steps:
            issues.append(Issue(name, "Name", "step name used more than once"))
            continue
        arguments = raw.get("Arguments")
        if not isinstance(arguments, dict):
            issues.append(Issue(name, "Arguments", "missing or not an object"))
            arguments = {}
        depends_on = raw.get("DependsOn") or []
        if not isinstance(depends_on, list):
            issues.append(Issue(name, "DependsOn", "must be a list of step names"))
            depends_on = []
        cache = raw.get("CacheConfig") if isinstance(raw.get("CacheConfig"), dict) else {}
        steps[name] = Step(
            name=name, type=str(raw.get("Type")), arguments=arguments, raw=raw, depends_on=list(depends_on),
            cache_enabled=bool(cache.get("Enabled")), cache_expire_after=cache.get("ExpireAfter"),
            retry_policies=list(raw.get("RetryPolicies") or []), property_files=list(raw.get("PropertyFiles") or []),
            condition_parent=parent, condition_branch=branch)
    return steps


def _link(step: Step, steps: dict[str, Step], parameters: dict[str, Parameter], issues: list[Issue]) -> None:
    """Check what the step names, and collect the steps it waits for."""
    upstream = {step.condition_parent} if step.condition_parent else set()
    for dependency in step.depends_on:
        if dependency in steps:
            upstream.add(dependency)
        else:
            issues.append(Issue(step.name, "DependsOn", f"names step {dependency!r}, which does not exist"))
    for path, reference in references(step.own_arguments, "Arguments"):
        target = _reference_target(reference, step.name, steps, parameters, path, issues)
        if target:
            upstream.add(target)
    upstream.discard(step.name)
    step.upstream = upstream


def _reference_target(reference: Any, step: str, steps: dict[str, Step], parameters: dict[str, Parameter],
                      path: str, issues: list[Issue]) -> str | None:
    """The step a reference reads from (None for parameters and execution variables); issues for bad ones."""
    if not isinstance(reference, str):
        issues.append(Issue(step, path, f"Get needs a string reference, got {reference!r}"))
        return None
    try:
        root, rest = split_reference(reference)
        if root == "Parameters":
            if rest not in parameters:
                issues.append(Issue(step, path, f"parameter {rest!r} is not declared in Parameters"))
            return None
        if root == "Execution":
            if rest not in EXECUTION_VARIABLES:
                issues.append(Issue(step, path, f"Execution.{rest} is not one of {', '.join(EXECUTION_VARIABLES)}"))
            return None
        target, tokens = split_step_reference(reference)
    except PathError as exc:
        issues.append(Issue(step, path, str(exc)))
        return None
    if target not in steps:
        issues.append(Issue(step, path, f"{reference!r} names step {target!r}, which does not exist"))
        return None
    if target == step:
        issues.append(Issue(step, path, f"{reference!r}: a step cannot read its own properties"))
        return None
    if not tokens:
        issues.append(Issue(step, path, f"{reference!r}: a step reference needs a property path"))
    return target


def _check_cycles(steps: dict[str, Step], issues: list[Issue]) -> None:
    try:
        graphlib.TopologicalSorter({name: step.upstream for name, step in steps.items()}).prepare()
    except graphlib.CycleError as exc:
        issues.append(Issue(PIPELINE, "Steps", f"steps depend on each other in a cycle: {' -> '.join(exc.args[1])}"))


def load_definition(path: str) -> dict[str, Any]:
    """Read a definition file, with errors that name the file and the problem."""
    try:
        with open(path, encoding="utf-8") as handle:
            definition = json.load(handle)
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DefinitionError(f"{path}: is a folder, not a definition file") from None
    except UnicodeDecodeError as exc:
        raise DefinitionError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DefinitionError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise DefinitionError(f"{path}: JSON nested too deeply to be a pipeline definition") from None
    if not isinstance(definition, dict) or not isinstance(definition.get("Steps"), list):
        raise DefinitionError(f"{path}: not a pipeline definition (expected an object with a 'Steps' list)")
    return definition
