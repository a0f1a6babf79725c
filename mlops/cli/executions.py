"""``mlops executions list | describe | steps | logs | retry | report``: inspect and resume executions.

``list`` and ``describe`` serve both targets (local store or SageMaker); the others read the local store,
where every step's logs, attempts and reports live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlops.cli.common import TARGETS, config, echo_json, fail, one_line
from mlops.local import commands, records
from mlops.local.report import write_report


@click.group()
def executions() -> None:
    """Inspect pipeline executions."""


@executions.command("list")
@click.option("--target", type=TARGETS, default="local", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_executions(ctx: click.Context, target: str, as_json: bool) -> None:
    """Executions, newest first."""
    pipeline_name = config(ctx).pipeline_name
    if target == "local":
        rows = commands.list_executions(pipeline_name)
    else:
        from mlops.aws.driver import DriverError, SageMakerDriver

        try:
            rows = SageMakerDriver(config(ctx).region).list_executions(pipeline_name)
        except DriverError as exc:
            fail(str(exc))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no executions")
        return
    for row in rows:  # ListPipelineExecutions summaries from either target; the id is the ARN's last part
        identifier = row.get("PipelineExecutionId") or str(row.get("PipelineExecutionArn", "")).rsplit("/", 1)[-1]
        reason = row.get("PipelineExecutionFailureReason")
        reason = "" if reason in (None, "", "None") else "\t" + one_line(str(reason))
        click.echo(f"{identifier}\t{row.get('PipelineExecutionStatus', '')}\t{row.get('StartTime', '')}{reason}")


@executions.command("describe")
@click.argument("execution_id")
@click.option("--target", type=TARGETS, default="local", show_default=True)
@click.pass_context
def describe_execution(ctx: click.Context, execution_id: str, target: str) -> None:
    """One execution with its step statuses (JSON)."""
    if target == "local":
        try:
            echo_json(commands.describe_execution(execution_id))
        except LookupError as exc:
            fail(str(exc))
        return
    from mlops.aws.driver import DriverError, SageMakerDriver

    driver = SageMakerDriver(config(ctx).region)
    try:
        described = driver.describe(driver.resolve_execution_arn(config(ctx).pipeline_name, execution_id))
    except DriverError as exc:
        fail(str(exc))
    if "StepsUnavailable" in described:
        click.echo(f"note: {described['StepsUnavailable']}", err=True)
    echo_json(described)


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
        fail(str(exc))
    if as_json:
        echo_json(rows)
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
            fail(f"execution {execution_id} has no step {step_name!r} (steps run: {names})")
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
        fail(f"no local execution {execution_id!r} (see `mlops executions list`)")
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
        fail(str(exc))
    if status != records.SUCCEEDED:
        fail(f"execution {execution_id} ended {status} again (see the summary above)")


@executions.command("report")
@click.argument("execution_id")
def report(execution_id: str) -> None:
    """(Re)write the HTML report of an execution and print its path."""
    try:
        path = write_report(execution_id)
    except LookupError as exc:
        fail(str(exc))
    records.set_report_path(execution_id, str(path))
    click.echo(str(path))
