"""`mlops executions steps|logs|retry|report` for local executions (registered onto pipelines.cli's group).

Imported at the bottom of pipelines/cli.py; importing it adds the commands, nothing else.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from pipelines.cli import executions
from pipelines.local import commands, records


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _when(value: Any) -> str:
    return value.strftime("%H:%M:%S") if value is not None else ""


@executions.command("steps")
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print ListPipelineExecutionSteps-style JSON.")
def steps(execution_id: str, as_json: bool) -> None:
    """Steps of a local execution: status, duration, attempts, cache hits, failure reasons."""
    try:
        rows = commands.list_steps(execution_id)
    except LookupError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no step has started yet")
        return
    for row in reversed(rows):
        duration = ""
        if row.get("EndTime") and row.get("StartTime"):
            duration = f"{(row['EndTime'] - row['StartTime']).total_seconds():.1f}s"
        cache = " (cache hit)" if row.get("CacheHitResult") else ""
        line = (f"{row['StepName']:<28} {row['StepType']:<13} {row['StepStatus']:<10} {_when(row['StartTime'])} "
                f"{duration:>8} attempts={row['AttemptCount']}{cache}")
        click.echo(line)
        if row.get("FailureReason"):
            click.echo(f"    {row['FailureReason']}")


def _step_logs(execution_id: str, step_name: str | None) -> list[tuple[str, Path]]:
    found = records.list_steps(execution_id)
    if step_name:
        found = [s for s in found if s.step_name == step_name]
        if not found:
            names = ", ".join(s.step_name for s in records.list_steps(execution_id)) or "none yet"
            _fail(f"execution {execution_id} has no step {step_name!r} (steps run: {names})")
    elif any(s.status == records.FAILED for s in found):
        found = [s for s in found if s.status == records.FAILED]
    logs = []
    for step in found:
        if step.log_path:
            logs.append((step.step_name, Path(step.log_path)))
        if step.step_type == "Tuning" and step.work_dir and not step.cache_source:
            for trial_log in sorted(Path(step.work_dir).glob("*/job.log")):
                logs.append((f"{step.step_name} / {trial_log.parent.name}", trial_log))
    return logs


@executions.command("logs")
@click.argument("execution_id")
@click.argument("step", required=False)
@click.option("--tail", "tail", type=int, default=0, help="Only the last N lines of each log.")
def logs(execution_id: str, step: str | None, tail: int) -> None:
    """Logs of a step (all of a tuning step's trials too); without STEP, the failed steps' (else all)."""
    if records.get_execution(execution_id) is None:
        _fail(f"no local execution {execution_id!r} (see `mlops executions list`)")
    for name, path in _step_logs(execution_id, step):
        click.echo(f"==> {name}: {path}")
        if not path.is_file():
            click.echo("(no log: the step was reused from the cache or has not written one)")
            continue
        lines = path.read_text(errors="replace").splitlines()
        for line in lines[-tail:] if tail else lines:
            click.echo(line)


@executions.command("retry")
@click.argument("execution_id")
def retry(execution_id: str) -> None:
    """Like RetryPipelineExecution: rerun the failed and not-run steps, reuse the succeeded ones."""
    try:
        status = commands.retry(execution_id)
    except (LookupError, RuntimeError) as exc:
        _fail(str(exc))
    if status != records.SUCCEEDED:
        sys.exit(1)


@executions.command("report")
@click.argument("execution_id")
def report(execution_id: str) -> None:
    """(Re)write the HTML report of an execution and print its path."""
    from pipelines.local.report import write_report

    try:
        path = write_report(execution_id)
    except LookupError as exc:
        _fail(str(exc))
    records.set_report_path(execution_id, str(path))
    click.echo(str(path))
