"""The ``mlops`` command: build, validate and run the pipeline, locally (default) or on SageMaker.

    mlops definition [--output FILE] [--normalised]
    mlops validate [FILE]
    mlops run [--target local|sagemaker] [--param Name=Value ...] [--wait/--no-wait] [--tag Key=Value ...]
    mlops executions list|describe ID [--target local|sagemaker]

Common options also come from MLOPS_REGION, MLOPS_ROLE_ARN, MLOPS_BUCKET, MLOPS_PIPELINE_NAME and
MLOPS_MODEL_PACKAGE_GROUP. Other modules add commands by importing ``main`` / ``executions`` and
registering onto them (see the bottom of this file); ``ctx.obj`` is the :class:`PipelineConfig`.
Importing this module has no side effects beyond defining the groups.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from pipelines.definition import (
    DefinitionError,
    PipelineConfig,
    build_definition,
    check_parameter_overrides,
    load_definition,
    normalise,
    parse_parameter_options,
    to_json,
)

TARGETS = click.Choice(["local", "sagemaker"])


def _config(ctx: click.Context) -> PipelineConfig:
    return ctx.find_object(PipelineConfig) or PipelineConfig.from_env()


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--region", envvar="MLOPS_REGION", default="us-east-1", show_default=True, help="AWS region.")
@click.option("--role-arn", envvar="MLOPS_ROLE_ARN", help="IAM role the pipeline and its jobs run as.")
@click.option("--bucket", envvar="MLOPS_BUCKET", help="S3 bucket for code, data and artifacts [local: mlops-local].")
@click.option("--pipeline-name", envvar="MLOPS_PIPELINE_NAME", default="image-classification", show_default=True)
@click.option("--model-package-group", envvar="MLOPS_MODEL_PACKAGE_GROUP", default="image-classification",
              show_default=True)
@click.pass_context
def main(ctx: click.Context, region: str, role_arn: str | None, bucket: str | None, pipeline_name: str,
         model_package_group: str) -> None:
    """Image-classification MLOps pipeline: local runs with no AWS account, or SageMaker."""
    ctx.obj = PipelineConfig(region=region, role=role_arn, bucket=bucket, pipeline_name=pipeline_name,
                             model_package_group=model_package_group)


@main.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the JSON here instead of stdout.")
@click.option("--normalised", is_flag=True, help="Replace the code hash with a placeholder (for diffs).")
@click.pass_context
def definition(ctx: click.Context, output: str | None, normalised: bool) -> None:
    """Print or write the pipeline definition JSON (stable from run to run)."""
    try:
        built = build_definition(_config(ctx))
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    text = to_json(normalise(built) if normalised else built)
    if output:
        from training.atomic import atomic_write_text

        atomic_write_text(output, text)
        click.echo(f"wrote {output} ({len(built['Steps'])} top-level steps)", err=True)
    else:
        click.echo(text, nl=False)


@main.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.pass_context
def validate(ctx: click.Context, file: str | None) -> None:
    """Check a definition (built now when FILE is omitted) against the SageMaker API shapes and its graph."""
    from pipelines.validate import errors_only, validate_definition

    try:
        loaded = load_definition(file) if file else build_definition(_config(ctx))
    except (DefinitionError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    issues = validate_definition(loaded)
    for issue in issues:
        click.echo(str(issue), err=issue.severity == "error")
    errors = errors_only(issues)
    source = file or "the built definition"
    if errors:
        _fail(f"{source}: {len(errors)} error(s)")
    click.echo(f"{source}: valid ({_count_steps(loaded)} steps checked, {len(issues)} warning(s))")


def _count_steps(definition: dict[str, Any]) -> int:
    from pipelines.definition import iter_steps

    return sum(1 for _ in iter_steps(definition.get("Steps", [])))


@main.command()
@click.option("--target", type=TARGETS, default="local", show_default=True, help="Where to run.")
@click.option("--param", "params", multiple=True, metavar="Name=Value", help="Override a pipeline parameter.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the execution to finish.")
@click.option("--tag", "tags", multiple=True, metavar="Key=Value", help="Tag the SageMaker pipeline (repeatable).")
@click.option("--poll-seconds", type=float, default=30.0, show_default=True, help="SageMaker status poll interval.")
@click.pass_context
def run(ctx: click.Context, target: str, params: tuple[str, ...], wait: bool, tags: tuple[str, ...],
        poll_seconds: float) -> None:
    """Stage the code, then run the pipeline locally or upsert and start it on SageMaker."""
    config = _config(ctx)
    try:
        overrides = parse_parameter_options(params)
        tag_map = parse_parameter_options(tags, option="--tag")
        if target == "local":
            config = config.for_local()
        else:
            config = config.require_aws()
        built = build_definition(config)
        check_parameter_overrides(built, overrides)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if target == "local":
        _run_local(config, built, overrides, wait)
    else:
        _run_sagemaker(config, built, overrides, wait, tag_map, poll_seconds)


def _stage_inputs(config: PipelineConfig, built: dict[str, Any], overrides: dict[str, str], upload_code, upload_data):
    """Upload the code bundle and, unless InputDataUrl is overridden, the shipped dataset to its default URI."""
    from pipelines import staging

    bundle = staging.collect_bundle()
    staged = staging.code_location(config.bucket, config.pipeline_name, bundle)
    written = upload_code(bundle, staged)
    click.echo(f"code {staged.tarball_uri} ({'uploaded' if written else 'already staged'})", err=True)
    if "InputDataUrl" not in overrides:
        default = next(p.get("DefaultValue") for p in built["Parameters"] if p["Name"] == "InputDataUrl")
        written = upload_data(staging.DATASET_DIR, default)
        click.echo(f"data {default} ({f'{len(written)} file(s) uploaded' if written else 'already staged'})", err=True)


def _run_local(config: PipelineConfig, built: dict[str, Any], overrides: dict[str, str], wait: bool) -> None:
    from pipelines import staging

    _stage_inputs(config, built, overrides, staging.stage_local, staging.stage_dataset_local)
    try:
        from pipelines.local import commands
    except ImportError as exc:
        _fail(f"the local executor is not available ({exc})")
    try:
        execution_id = commands.run(built, overrides, pipeline_name=config.pipeline_name, wait=wait)
    except ValueError as exc:  # the executor's DefinitionError / ParameterError: nothing ran
        _fail(str(exc))
    click.echo(execution_id)
    if wait:
        described = commands.describe_execution(execution_id)
        status = described.get("PipelineExecutionStatus")
        if status != "Succeeded":
            reason = described.get("FailureReason")
            _fail(f"execution {execution_id} ended {status}" + (f": {reason}" if reason else ""))


def _run_sagemaker(config: PipelineConfig, built: dict[str, Any], overrides: dict[str, str], wait: bool,
                   tags: dict[str, str], poll_seconds: float) -> None:
    from pipelines.sagemaker_driver import DriverError, SageMakerDriver

    driver = SageMakerDriver(config.region)
    try:
        _stage_inputs(config, built, overrides, driver.stage_code, driver.stage_dataset)
        result = driver.upsert(config.pipeline_name, built, config.role, tags=tags,
                               description="Image classification: preprocess, CNN + XGBoost, tune, evaluate, register")
        click.echo(f"{'created' if result.created else 'updated'} {result.pipeline_arn}", err=True)
        execution_arn = driver.start(config.pipeline_name, overrides)
        click.echo(execution_arn)
        if wait:
            status = driver.wait(execution_arn, poll_seconds=poll_seconds, on_update=_print_progress)
            if status != "Succeeded":
                _fail(f"execution ended {status}")
    except DriverError as exc:
        _fail(str(exc))


def _print_progress(status: str, steps) -> None:
    if isinstance(steps, list):
        parts = ", ".join(f"{s.get('StepName')}={s.get('StepStatus')}" for s in steps) or "no steps yet"
    else:
        parts = str(steps)
    click.echo(f"[{status}] {parts}", err=True)


@main.group()
def executions() -> None:
    """Inspect pipeline executions."""


@executions.command("list")
@click.option("--target", type=TARGETS, default="local", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def list_executions(ctx: click.Context, target: str, as_json: bool) -> None:
    """Executions, newest first."""
    config = _config(ctx)
    if target == "local":
        try:
            from pipelines.local import commands
        except ImportError as exc:
            _fail(f"the local executor is not available ({exc})")
        rows = commands.list_executions(config.pipeline_name)
    else:
        from pipelines.sagemaker_driver import DriverError, SageMakerDriver

        try:
            rows = SageMakerDriver(config.region).list_executions(config.pipeline_name)
        except DriverError as exc:
            _fail(str(exc))
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no executions")
        return
    for row in rows:  # ListPipelineExecutions summaries from either target; the id is the ARN's last part
        identifier = row.get("PipelineExecutionId") or str(row.get("PipelineExecutionArn", "")).rsplit("/", 1)[-1]
        reason = row.get("PipelineExecutionFailureReason")
        reason = "" if reason in (None, "", "None") else "\t" + _one_line(str(reason))
        click.echo(f"{identifier}\t{row.get('PipelineExecutionStatus', '')}\t{row.get('StartTime', '')}{reason}")


def _one_line(text: str, limit: int = 160) -> str:
    """Failure reasons can hold a traceback; a table row shows its first line, shortened."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


@executions.command("describe")
@click.argument("execution_id")
@click.option("--target", type=TARGETS, default="local", show_default=True)
@click.pass_context
def describe_execution(ctx: click.Context, execution_id: str, target: str) -> None:
    """One execution with its step statuses (JSON)."""
    config = _config(ctx)
    if target == "local":
        try:
            from pipelines.local import commands
        except ImportError as exc:
            _fail(f"the local executor is not available ({exc})")
        try:
            _echo_json(commands.describe_execution(execution_id))
        except (KeyError, LookupError, ValueError) as exc:
            _fail(str(exc))
        return
    from pipelines.sagemaker_driver import DriverError, SageMakerDriver

    driver = SageMakerDriver(config.region)
    try:
        described = driver.describe(driver.resolve_execution_arn(config.pipeline_name, execution_id))
    except DriverError as exc:
        _fail(str(exc))
    if "StepsUnavailable" in described:
        click.echo(f"note: {described['StepsUnavailable']}", err=True)
    _echo_json(described)


# Optional command modules register themselves onto `main` / `executions` when imported.
for _module in ("pipelines.local.cli_commands", "inference.cli_commands"):
    try:
        __import__(_module)
    except ModuleNotFoundError as _exc:  # not written yet; a missing dependency inside it still surfaces
        if _exc.name is None or not _module.startswith(_exc.name):
            raise
