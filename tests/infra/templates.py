"""infra/'s CloudFormation templates, loaded with cfn-lint's YAML decoder (short-form intrinsics become Fn::...)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tests.helpers import ROOT

INFRA = ROOT / "infra"


def template_paths() -> list[Path]:
    return sorted(p for p in INFRA.glob("*.yml") if "AWSTemplateFormatVersion" in p.read_text())


@functools.cache
def load(name: str) -> dict[str, Any]:
    from cfnlint.decode import decode

    template, problems = decode(str(INFRA / name))
    assert not problems, problems
    return template


def resources(name: str, kind: str | None = None) -> dict[str, dict[str, Any]]:
    return {key: value for key, value in load(name)["Resources"].items() if kind is None or value["Type"] == kind}


def sub_text(value: Any) -> str:
    """The text of a string or Fn::Sub (placeholders kept), for checks on ARNs and names."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return ""


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
