"""The expression grammar of a pipeline definition: what an expression is, property paths, references.

What the SDK writes and SageMaker evaluates at run time: ``{"Get": "Parameters.X"}``,
``{"Get": "Execution.PipelineExecutionId"}``, ``{"Get": "Steps.S.<property path>"}`` (a DescribeXxx field;
``Outputs['train']`` picks a list item by its name, ``[0]`` by index), ``{"Std:Join": {"On", "Values"}}`` and
``{"Std:JsonGet": {"PropertyFile" | "S3Uri", "Path"}}``. The validator, the executor and the CLI all read
expressions through this module, so they agree on what a reference means.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

EXPRESSION_KEYS = ("Get", "Std:Join", "Std:JsonGet")
ROOTS = ("Parameters", "Execution", "Steps")
EXECUTION_VARIABLES = ("PipelineExecutionId", "PipelineExecutionArn", "PipelineName", "PipelineArn",
                       "StartDateTime", "CurrentDateTime")
_TOKEN = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")
_STEP_REFERENCE = re.compile(r"Steps\.([^.\[]+)(.*)$")


class PathError(ValueError):
    """A property path or reference that cannot be read; the model turns it into a definition issue."""


def is_expression(value: Any) -> bool:
    """``{"Get": ...}``, ``{"Std:Join": ...}`` or ``{"Std:JsonGet": ...}``: a single-key dict naming a function."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in EXPRESSION_KEYS


def parse_path(path: str) -> list[str | int]:
    """``a.b['c'][0]`` -> ``['a', 'b', 'c', 0]``; refuses anything it cannot read entirely."""
    tokens: list[str | int] = []
    text = "." + path if path and path[0] not in ".[" else path
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            raise PathError(f"cannot parse property path {path!r} at {text[position:]!r}")
        name, index, quoted, double_quoted = match.groups()
        tokens.append(int(index) if index is not None else next(v for v in (name, quoted, double_quoted)
                                                                  if v is not None))
        position = match.end()
    return tokens


def split_reference(reference: str) -> tuple[str, str]:
    """``Parameters.X`` -> ("Parameters", "X"); the root is one of :data:`ROOTS`."""
    root, _, rest = reference.partition(".")
    if root not in ROOTS or not rest:
        raise PathError(f"{reference!r}: a reference is Parameters.<name>, Execution.<variable> or "
                        "Steps.<step>.<property path>")
    return root, rest


def split_step_reference(reference: str) -> tuple[str, list[str | int]]:
    """``Steps.Name.Rest`` -> (Name, parsed Rest); step names may hold '-' but never '.' or '['."""
    match = _STEP_REFERENCE.match(reference)
    if not match:
        raise PathError(f"{reference!r} is not a step reference (Steps.<step>.<property path>)")
    return match.group(1), parse_path(match.group(2)) if match.group(2) else []


def references(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``Get`` reference inside ``value`` (Std:Join values and JsonGet property files included),
    as (where it sits, the reference string)."""
    if isinstance(value, dict):
        if is_expression(value) and "Get" in value:
            yield path, value["Get"]
            return
        for key, item in value.items():
            yield from references(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from references(item, f"{path}[{index}]")


def referenced_steps(value: Any) -> set[str]:
    """Names of the steps an argument tree reads (Get Steps.X..., JsonGet on X's property files)."""
    found = set()
    for _, reference in references(value):
        if isinstance(reference, str) and reference.startswith("Steps."):
            try:
                found.add(split_step_reference(reference)[0])
            except PathError:
                continue
    return found


def referenced_parameters(value: Any) -> set[str]:
    """Names of the parameters an argument tree reads."""
    return {reference[len("Parameters."):] for _, reference in references(value)
            if isinstance(reference, str) and reference.startswith("Parameters.")}
