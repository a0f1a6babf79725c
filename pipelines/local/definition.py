"""Read a pipeline definition JSON: steps (condition branches included), their dependencies, parameters.

The graph comes from the JSON alone, as SageMaker builds it: a step runs after the steps named in its
``DependsOn``, after every step its Arguments reference (Get Steps.X..., JsonGet on X's property files), and
a step inside a ConditionStep's IfSteps/ElseSteps after that ConditionStep (and only on its branch).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from pipelines.local.expressions import referenced_steps

SUPPORTED_TYPES = ("Processing", "Training", "Tuning", "Condition", "Fail", "RegisterModel")
PARAMETER_TYPES = ("String", "Integer", "Float", "Boolean")


class DefinitionError(ValueError):
    """The definition cannot be run: names the step/field and what was expected."""


class ParameterError(ValueError):
    """A --param override is unknown or of the wrong type; raised before anything runs."""


@dataclass
class StepDef:
    name: str
    type: str
    arguments: dict[str, Any]
    depends_on: list[str]
    cache_enabled: bool
    cache_expire_after: str | None
    retry_policies: list[dict[str, Any]]
    property_files: list[dict[str, Any]]
    condition_parent: str | None = None  # the ConditionStep whose branch holds this step
    condition_branch: bool | None = None  # True: IfSteps, False: ElseSteps
    upstream: set[str] = field(default_factory=set)


@dataclass
class Definition:
    raw: dict[str, Any]
    steps: dict[str, StepDef]
    parameters: dict[str, dict[str, Any]]

    def order(self) -> list[str]:
        """A topological order (definition order among independent steps)."""
        done: list[str] = []
        remaining = list(self.steps)
        while remaining:
            ready = [n for n in remaining if self.steps[n].upstream <= set(done)]
            if not ready:
                raise DefinitionError(f"the steps {remaining} depend on each other in a cycle")
            done.extend(ready)
            remaining = [n for n in remaining if n not in ready]
        return done

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

        An unknown name, a value of the wrong type, a value outside EnumValues, or a parameter with no
        default and no value is a :class:`ParameterError` naming the valid parameters.
        """
        valid = ", ".join(f"{n} ({p.get('Type', 'String')})" for n, p in self.parameters.items()) or "none"
        unknown = sorted(set(overrides) - set(self.parameters))
        if unknown:
            raise ParameterError(f"unknown parameter(s) {', '.join(unknown)}; this pipeline's parameters are: {valid}")
        values: dict[str, Any] = {}
        for name, spec in self.parameters.items():
            kind = spec.get("Type", "String")
            if name in overrides:
                values[name] = convert_parameter(name, kind, overrides[name])
            elif "DefaultValue" in spec:
                values[name] = convert_parameter(name, kind, spec["DefaultValue"])
            else:
                raise ParameterError(f"parameter {name} ({kind}) has no default: pass --param {name}=VALUE")
            allowed = spec.get("EnumValues")
            if allowed and values[name] not in allowed:
                raise ParameterError(f"parameter {name}={values[name]!r} is not one of {allowed}")
        return values


def convert_parameter(name: str, kind: str, value: Any) -> Any:
    """A --param string (or a Python value) as the parameter's declared type, or a clear error."""
    text = str(value).strip()
    problem = f"parameter {name} is {kind}, got {value!r}"
    if kind == "String":
        if not isinstance(value, str):
            raise ParameterError(f"{problem}: expected a string")
        return value
    if kind == "Integer":
        if isinstance(value, bool) or not (isinstance(value, int) or re.fullmatch(r"[+-]?\d+", text)):
            raise ParameterError(f"{problem}: expected a whole number such as 3")
        return int(text)
    if kind == "Float":
        if isinstance(value, bool):
            raise ParameterError(f"{problem}: expected a number such as 0.5")
        try:
            number = float(text)
        except ValueError:
            raise ParameterError(f"{problem}: expected a number such as 0.5") from None
        if not math.isfinite(number):
            raise ParameterError(f"{problem}: expected a finite number")
        return number
    if kind == "Boolean":
        if isinstance(value, bool):
            return value
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ParameterError(f"{problem}: expected true or false")
    raise DefinitionError(f"parameter {name}: unknown Type {kind!r} (expected one of {PARAMETER_TYPES})")


def _step(raw: dict[str, Any], parent: str | None, branch: bool | None) -> StepDef:
    name, kind = raw.get("Name"), raw.get("Type")
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"a step has no Name: {str(raw)[:120]}")
    if kind not in SUPPORTED_TYPES:
        raise DefinitionError(f"step {name}: Type {kind!r} cannot run locally (supported: {SUPPORTED_TYPES})")
    cache = raw.get("CacheConfig") or {}
    return StepDef(
        name=name,
        type=kind,
        arguments=raw.get("Arguments") or {},
        depends_on=list(raw.get("DependsOn") or []),
        cache_enabled=bool(cache.get("Enabled")),
        cache_expire_after=cache.get("ExpireAfter"),
        retry_policies=list(raw.get("RetryPolicies") or []),
        property_files=list(raw.get("PropertyFiles") or []),
        condition_parent=parent,
        condition_branch=branch,
    )


def parse(raw: dict[str, Any]) -> Definition:
    """Flatten the steps (condition branches included) and compute each step's upstream set."""
    if not isinstance(raw, dict) or not isinstance(raw.get("Steps"), list):
        raise DefinitionError("the definition has no 'Steps' list")
    steps: dict[str, StepDef] = {}

    def add(step_raw: dict[str, Any], parent: str | None, branch: bool | None) -> None:
        step = _step(step_raw, parent, branch)
        if step.name in steps:
            raise DefinitionError(f"two steps are named {step.name!r}")
        steps[step.name] = step
        if step.type == "Condition":
            for key, flag in (("IfSteps", True), ("ElseSteps", False)):
                for child in step.arguments.get(key) or []:
                    add(child, step.name, flag)

    for step_raw in raw["Steps"]:
        add(step_raw, None, None)

    for step in steps.values():
        arguments = step.arguments
        if step.type == "Condition":
            arguments = {"Conditions": arguments.get("Conditions", [])}
        upstream = set(step.depends_on) | referenced_steps(arguments)
        if step.condition_parent:
            upstream.add(step.condition_parent)
        unknown = upstream - set(steps)
        if unknown:
            raise DefinitionError(f"step {step.name} depends on unknown step(s) {sorted(unknown)}")
        upstream.discard(step.name)
        step.upstream = upstream

    parameters: dict[str, dict[str, Any]] = {}
    for spec in raw.get("Parameters") or []:
        if not isinstance(spec, dict) or "Name" not in spec:
            raise DefinitionError(f"a parameter has no Name: {spec!r}")
        parameters[spec["Name"]] = spec
    definition = Definition(raw=raw, steps=steps, parameters=parameters)
    definition.order()  # refuses cycles up front
    return definition
