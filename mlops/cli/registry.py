"""``mlops registry list|describe|approve|reject``: the approver's view of the Model Registry.

The same commands and the same output for the local registry (default) and SageMaker (``--target sagemaker``):
group, version, status, accuracy and baseline accuracy (from the package's evaluation.json), created,
approved by, description; ``describe`` adds the approval history. ``--json`` prints the records instead;
``list --format csv`` a pandas-built CSV for a spreadsheet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mlops.cli.common import config, echo_json, fail
from mlops.registry import APPROVED, PENDING, REJECTED, RegistryError, get_registry

TARGET = click.option("--target", type=click.Choice(["local", "sagemaker"]), default="local", show_default=True,
                      help="Which Model Registry.")
GROUP = click.option("--group", default=None,
                     help="Model package group [default: --model-package-group / MLOPS_MODEL_PACKAGE_GROUP].")
AS_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")


def _registry(ctx: click.Context, target: str) -> Any:
    region = config(ctx).region
    try:
        return get_registry(target, region=region) if target == "sagemaker" else get_registry(target)
    except Exception as exc:  # noqa: BLE001 - boto3 credential/region problems: say so, no traceback
        fail(f"cannot open the {target} registry: {exc}")


def _group(ctx: click.Context, group: str | None) -> str:
    return group or config(ctx).model_package_group


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _row(record: dict[str, Any]) -> list[str]:
    metrics = record.get("Metrics") or {}
    return [record["ModelPackageGroupName"], str(record["ModelPackageVersion"]), record["ModelApprovalStatus"],
            _pct(metrics.get("accuracy")), _pct(metrics.get("baseline_accuracy")), _when(record.get("CreationTime")),
            record.get("ApprovedBy") or "-", record.get("ModelPackageDescription") or ""]


def _print_table(records: list[dict[str, Any]]) -> None:
    table = Table(show_lines=False)
    for column in ("group", "version", "status", "accuracy", "baseline", "created", "approved by", "description"):
        table.add_column(column, justify="right" if column in ("version", "accuracy", "baseline") else "left")
    for record in records:
        table.add_row(*_row(record))
    Console(width=160).print(table)


def _print_record(record: dict[str, Any]) -> None:
    metrics = record.get("Metrics") or {}
    lines = [
        ("group", record["ModelPackageGroupName"]), ("version", record["ModelPackageVersion"]),
        ("arn", record["ModelPackageArn"]), ("status", record["ModelApprovalStatus"]),
        ("accuracy", _pct(metrics.get("accuracy"))), ("baseline accuracy", _pct(metrics.get("baseline_accuracy"))),
        ("metrics from", metrics.get("source") or "-"), ("created", _when(record.get("CreationTime"))),
        ("modified", _when(record.get("LastModifiedTime"))), ("approved by", record.get("ApprovedBy") or "-"),
        ("approval comment", record.get("ApprovalDescription") or "-"),
        ("description", record.get("ModelPackageDescription") or "-"),
    ]
    containers = (record.get("InferenceSpecification") or {}).get("Containers") or []
    if containers:
        lines.append(("model data", containers[0].get("ModelDataUrl", "-")))
    if metrics.get("error"):
        lines.append(("metrics error", metrics["error"]))
    for key, value in lines:
        click.echo(f"{key:>18}: {value}")
    history = record.get("ApprovalHistory") or []
    click.echo(f"{'history':>18}: {'none' if not history else ''}")
    for entry in history:
        comment = f"  \"{entry['Comment']}\"" if entry.get("Comment") else ""
        click.echo(f"{'':>20}{_when(entry.get('Time'))}  {entry.get('PreviousStatus')} -> {entry.get('Status')}"
                   f"  by {entry.get('By')}{comment}")
    smoke_tests = record.get("SmokeTests") or []
    click.echo(f"{'smoke tests':>18}: {'none' if not smoke_tests else ''}")
    for entry in smoke_tests:
        click.echo(f"{'':>20}{_when(entry.get('Time'))}  {entry.get('Stage')}: {entry.get('Result')}  by "
                   f"{entry.get('By')} on {entry.get('Endpoint') or '-'}  ({entry.get('Summary') or ''})")
    gates = record.get("GateHistory") or []
    click.echo(f"{'gate history':>18}: {'none' if not gates else ''}")
    for entry in gates:
        click.echo(f"{'':>20}{_when(entry.get('Time'))}  {entry.get('Stage')} gate {entry.get('Decision')}  by "
                   f"{entry.get('By')}  \"{entry.get('Comment')}\"")


@click.group()
def registry() -> None:
    """Model Registry: list, describe, approve and reject model versions."""


CSV_COLUMNS = ("group", "version", "status", "accuracy", "baseline_accuracy", "created", "approved_by",
               "description", "arn", "model_data")


def records_frame(records: list[dict[str, Any]]) -> Any:
    """The versions as a pandas table (one row each, accuracies as fractions, times in ISO 8601): the CSV."""
    import pandas as pd

    rows = []
    for record in records:
        metrics = record.get("Metrics") or {}
        containers = (record.get("InferenceSpecification") or {}).get("Containers") or [{}]
        created = record.get("CreationTime")
        rows.append({"group": record["ModelPackageGroupName"], "version": record["ModelPackageVersion"],
                     "status": record["ModelApprovalStatus"], "accuracy": metrics.get("accuracy"),
                     "baseline_accuracy": metrics.get("baseline_accuracy"),
                     "created": created.isoformat() if isinstance(created, datetime) else created,
                     "approved_by": record.get("ApprovedBy"), "description": record.get("ModelPackageDescription"),
                     "arn": record.get("ModelPackageArn"), "model_data": containers[0].get("ModelDataUrl")})
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


@registry.command("list")
@TARGET
@click.option("--group", default=None, help="Only this model package group (default: all groups).")
@click.option("--status", type=click.Choice([PENDING, APPROVED, REJECTED]), default=None, help="Only this status.")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "csv"]), default=None,
              help="table (default), json (the records), or csv (one row per version, for a spreadsheet).")
@AS_JSON
@click.pass_context
def list_packages(ctx: click.Context, target: str, group: str | None, status: str | None, output_format: str | None,
                  as_json: bool) -> None:
    """Model versions, newest first, with their metrics and approval state."""
    if as_json and output_format not in (None, "json"):
        fail(f"--json and --format {output_format} disagree; give one")
    output_format = output_format or ("json" if as_json else "table")
    try:
        records = _registry(ctx, target).list_model_packages(group, status)
    except RegistryError as exc:
        fail(str(exc))
    if output_format == "json":
        echo_json(records)
    elif output_format == "csv":
        click.echo(records_frame(records).to_csv(index=False), nl=False)
    elif not records:
        click.echo("no model packages" + (f" in group {group!r}" if group else ""))
    else:
        _print_table(records)


@registry.command("describe")
@TARGET
@GROUP
@click.option("--version", type=click.IntRange(min=1), default=None, help="Model version (default: newest).")
@AS_JSON
@click.pass_context
def describe_package(ctx: click.Context, target: str, group: str | None, version: int | None, as_json: bool) -> None:
    """One model version: metrics, approval state and history."""
    try:
        record = _registry(ctx, target).describe_model_package(_group(ctx, group), version)
    except RegistryError as exc:
        fail(str(exc))
    if as_json:
        echo_json(record)
    else:
        _print_record(record)


def _decide(ctx: click.Context, action: str, target: str, group: str | None, version: int | None,
            approver: str | None, comment: str | None, as_json: bool) -> None:
    reg = _registry(ctx, target)
    try:
        record = getattr(reg, action)(_group(ctx, group), version, approver=approver, comment=comment)
    except RegistryError as exc:
        fail(str(exc))
    if as_json:
        echo_json(record)
        return
    click.echo(f"{record['ModelPackageGroupName']} version {record['ModelPackageVersion']} is now "
               f"{record['ModelApprovalStatus']} ({record['ModelPackageArn']})")
    if record["ModelApprovalStatus"] == APPROVED and target == "local":
        click.echo(f"next: mlops deploy --target local --version {record['ModelPackageVersion']}")


def _decision_command(action: str, doc: str):
    @registry.command(action, help=doc)
    @TARGET
    @GROUP
    @click.option("--version", type=click.IntRange(min=1), default=None,
                  help="Model version (default: the newest PendingManualApproval one).")
    @click.option("--approver", default=None, help="Who decides [default: $USER locally, the STS caller on AWS].")
    @click.option("--comment", default=None, help="Why (required when reversing an earlier decision).")
    @AS_JSON
    @click.pass_context
    def command(ctx: click.Context, target: str, group: str | None, version: int | None, approver: str | None,
                comment: str | None, as_json: bool) -> None:
        _decide(ctx, action, target, group, version, approver, comment, as_json)

    return command


approve = _decision_command("approve", "Approve a model version (PendingManualApproval or Rejected -> Approved).")
reject = _decision_command("reject", "Reject a model version (PendingManualApproval or Approved -> Rejected).")
