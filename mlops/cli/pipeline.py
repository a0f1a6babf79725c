"""``mlops definition | validate | run``: build the definition, check it, run it locally or on SageMaker.

The SageMaker SDK (about 2 s to import), botocore's API models and boto3 load inside the commands that need
them, so the other ``mlops`` commands start at once.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import click

from mlops import staging
from mlops.cli.common import TARGETS, config, fail, parse_pairs
from mlops.definition.config import PipelineConfig
from mlops.definition.model import DefinitionError, Issue, load_definition, parse
from mlops.local import commands
from pipelines.source_bundle import code_location, collect_bundle
from training.atomic import atomic_write_text

STRATEGY = click.option("--tuning-strategy", type=click.Choice(["Bayesian", "Random", "Grid", "Hyperband"]),
                        default=None,
                        help="Shape of the tuning job, chosen at build time [default: Bayesian; env "
                             "MLOPS_TUNING_STRATEGY]. With Bayesian, TuningStrategy=Random also works per run.")

FRAMEWORK = click.option("--framework", type=click.Choice(["pytorch", "tensorflow"]), default=None,
                         help="The CNN's framework, chosen at build time: PyTorch (train_cnn.py) or TensorFlow/Keras "
                              "(train_keras.py, served by TensorFlow Serving) [default: pytorch; env MLOPS_FRAMEWORK].")


def _built(ctx: click.Context, tuning_strategy: str | None, target: str = "local",
           sdk_warnings: list[str] | None = None, framework: str | None = None) -> tuple[PipelineConfig, dict]:
    from mlops.definition.build import build_definition

    built_config = config(ctx)
    if tuning_strategy:
        built_config = replace(built_config, tuning_strategy=tuning_strategy)
    if framework:
        built_config = replace(built_config, framework=framework)
    built_config = built_config.for_local() if target == "local" else built_config.require_aws()
    return built_config, build_definition(built_config, sdk_warnings)


@click.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write the JSON here instead of stdout.")
@click.option("--normalised", "--normalized", is_flag=True, help="Replace the code hash with a placeholder (for diffs).")
@STRATEGY
@FRAMEWORK
@click.pass_context
def definition(ctx: click.Context, output: str | None, normalised: bool, tuning_strategy: str | None,
               framework: str | None) -> None:
    """Print or write the pipeline definition JSON (stable from run to run)."""
    from mlops.definition.build import normalise, to_json

    try:
        _, built = _built(ctx, tuning_strategy, framework=framework)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    text = to_json(normalise(built) if normalised else built)
    if output:
        atomic_write_text(output, text)
        click.echo(f"wrote {output} ({len(built['Steps'])} top-level steps)", err=True)
    else:
        click.echo(text, nl=False)


@click.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@STRATEGY
@FRAMEWORK
@click.pass_context
def validate(ctx: click.Context, file: str | None, tuning_strategy: str | None, framework: str | None) -> None:
    """Check a definition (built now when FILE is omitted) against the SageMaker API shapes and its graph."""
    from mlops.definition.validate import errors_only, validate_definition

    sdk_warnings: list[str] = []
    try:
        if file and (tuning_strategy or framework):
            raise ValueError("--tuning-strategy and --framework shape a definition being built; FILE is already built")
        loaded = load_definition(file) if file else _built(ctx, tuning_strategy, sdk_warnings=sdk_warnings,
                                                            framework=framework)[1]
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    issues = [Issue("sdk", "", text, "warning") for text in sdk_warnings] + validate_definition(loaded)
    for issue in issues:
        click.echo(str(issue), err=issue.severity == "error")
    errors = errors_only(issues)
    source = file or "the built definition"
    if errors:
        fail(f"{source}: {len(errors)} error(s)")
    click.echo(f"{source}: valid ({len(parse(loaded).steps)} steps checked, {len(issues)} warning(s))")


@click.command()
@click.option("--target", type=TARGETS, default="local", show_default=True, help="Where to run.")
@click.option("--param", "params", multiple=True, metavar="Name=Value", help="Override a pipeline parameter.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the execution to finish.")
@click.option("--tag", "tags", multiple=True, metavar="Key=Value", help="Tag the SageMaker pipeline (repeatable).")
@click.option("--poll-seconds", type=float, default=30.0, show_default=True, help="SageMaker status poll interval.")
@click.option("--definition", "definition_file", type=click.Path(dir_okay=False), default=None,
              help="Run this definition file (the one `mlops validate` checked) instead of building one now.")
@STRATEGY
@FRAMEWORK
@click.pass_context
def run(ctx: click.Context, target: str, params: tuple[str, ...], wait: bool, tags: tuple[str, ...],
        poll_seconds: float, definition_file: str | None, tuning_strategy: str | None, framework: str | None) -> None:
    """Stage the code, then run the pipeline locally or upsert and start it on SageMaker."""
    try:
        overrides = parse_pairs(params)
        tag_map = parse_pairs(tags, option="--tag")
        if definition_file:
            if tuning_strategy or framework:
                raise ValueError("--tuning-strategy and --framework shape a definition being built; the file "
                                 "given with --definition is already built")
            built_config = config(ctx).for_local() if target == "local" else config(ctx).require_aws()
            built = load_definition(definition_file)
            _check_code_matches(built, built_config, definition_file)
        else:
            built_config, built = _built(ctx, tuning_strategy, target, framework=framework)
        parse(built).check().resolve_parameters(overrides)  # refused here, before anything is staged
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    if target == "local":
        _run_local(built_config, built, overrides, wait)
    else:
        _run_sagemaker(built_config, built, overrides, wait, tag_map, poll_seconds)


def _check_code_matches(built: dict[str, Any], built_config: PipelineConfig, source: str) -> None:
    """A definition file names its job code by content hash: it must be the code that is staged now."""
    staged = code_location(built_config.bucket, built_config.pipeline_name, collect_bundle())
    text = json.dumps(built)
    if staged.tarball_uri not in text:
        raise ValueError(f"{source}: its jobs do not run the code in this working tree (expected "
                         f"{staged.tarball_uri}); rebuild it with `mlops definition` (same --bucket and "
                         "--pipeline-name), or check out the commit it was built from")


def stage_inputs(built_config: PipelineConfig, built: dict[str, Any], overrides: dict[str, str], upload_code,
                  upload_data, upload_path, upload_note) -> None:
    """Upload the code bundle and, unless InputDataUrl is overridden, the shipped dataset to its default URI.

    An InputDataUrl or PretrainedWeightsUrl that is a local path or file:// URI is staged (with checksums) and
    replaced by its s3:// URI (``upload_path(source, bucket, target)``). PretrainedWeightsUrl's default prefix
    always gets its README.txt note (``upload_note(uri)``), so TrainCNN's weights channel is never empty.
    """
    bundle = collect_bundle()
    staged = code_location(built_config.bucket, built_config.pipeline_name, bundle)
    written = upload_code(bundle, staged)
    click.echo(f"code {staged.tarball_uri} ({'uploaded' if written else 'already staged'})", err=True)
    parameters = parse(built).parameters
    if "InputDataUrl" not in overrides:
        default = parameters["InputDataUrl"].default
        written = upload_data(staging.DATASET_DIR, default)
        click.echo(f"data {default} ({f'{len(written)} file(s) uploaded' if written else 'already staged'})", err=True)
    if staging.WEIGHTS_INPUT.parameter in parameters:  # a definition file built before the parameter has none
        upload_note(parameters[staging.WEIGHTS_INPUT.parameter].default)
    for target, what in ((staging.DATA_INPUT, "data"), (staging.WEIGHTS_INPUT, "weights")):
        if target.parameter not in overrides:
            continue
        try:
            local = staging.local_data_path(overrides[target.parameter], target.parameter)
            if local is None:
                continue
            uri = upload_path(local, built_config.bucket, target)
        except (ValueError, FileNotFoundError) as exc:
            fail(str(exc))
        click.echo(f"{what} {overrides[target.parameter]} staged as {uri}", err=True)
        overrides[target.parameter] = uri


def _run_local(built_config: PipelineConfig, built: dict[str, Any], overrides: dict[str, str], wait: bool) -> None:
    stage_inputs(built_config, built, overrides, staging.stage_local, staging.stage_dataset_local,
                  staging.stage_local_path_local, staging.stage_no_weights_note_local)
    try:
        execution_id = commands.run(built, overrides, pipeline_name=built_config.pipeline_name, wait=wait)
    except DefinitionError as exc:  # nothing ran
        fail(str(exc))
    click.echo(execution_id)
    if wait:
        described = commands.describe_execution(execution_id)
        status = described.get("PipelineExecutionStatus")
        if status != "Succeeded":
            reason = described.get("FailureReason")
            fail(f"execution {execution_id} ended {status}" + (f": {reason}" if reason else ""))


def _run_sagemaker(built_config: PipelineConfig, built: dict[str, Any], overrides: dict[str, str], wait: bool,
                   tags: dict[str, str], poll_seconds: float) -> None:
    from mlops.aws.driver import DriverError, SageMakerDriver

    driver = SageMakerDriver(built_config.region)
    try:
        stage_inputs(built_config, built, overrides, driver.stage_code, driver.stage_dataset,
                      lambda source, bucket, target: staging.stage_local_path_to_s3(source, bucket, driver.s3, target),
                      lambda uri: staging.stage_no_weights_note_to_s3(uri, driver.s3))
        result = driver.upsert(built_config.pipeline_name, built, built_config.role, tags=tags,
                               description="Image classification: preprocess, CNN + XGBoost, tune, evaluate, register")
        click.echo(f"{'created' if result.created else 'updated'} {result.pipeline_arn}", err=True)
        execution_arn = driver.start(built_config.pipeline_name, overrides)
        click.echo(execution_arn)
        if wait:
            status = driver.wait(execution_arn, poll_seconds=poll_seconds, on_update=_print_progress)
            if status != "Succeeded":
                fail(f"execution ended {status}")
    except DriverError as exc:
        fail(str(exc))


def _print_progress(status: str, steps) -> None:
    if isinstance(steps, list):
        parts = ", ".join(f"{s.get('StepName')}={s.get('StepStatus')}" for s in steps) or "no steps yet"
    else:
        parts = str(steps)
    click.echo(f"[{status}] {parts}", err=True)
