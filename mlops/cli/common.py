"""What every ``mlops`` subcommand shares: the one error helper, the build config, JSON output, option types."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, NoReturn

import click

from mlops.definition.config import PipelineConfig

TARGETS = click.Choice(["local", "sagemaker"])


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit 1: the only way a command reports a user error."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def config(ctx: click.Context) -> PipelineConfig:
    """The PipelineConfig the top-level options built (``ctx.obj``), or one from the MLOPS_* variables."""
    return ctx.find_object(PipelineConfig) or PipelineConfig.from_env()


def _default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_default))


def parse_pairs(items: tuple[str, ...] | list[str], option: str = "--param") -> dict[str, str]:
    """``("Name=Value", ...)`` from repeated options into a dict (the last of a repeated name wins)."""
    parsed: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{option} {item!r}: expected Name=Value")
        parsed[name.strip()] = value
    return parsed


def one_line(text: str, limit: int = 160) -> str:
    """Failure reasons can hold a traceback; a table row shows its first line, shortened."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
