"""``mlops deploy``, ``mlops endpoints list`` and ``mlops invoke``: the stage endpoints, and a request to one.

    mlops deploy --target local [--stage staging|prod] [--version N] [--port P] [--background | --stop]
    mlops deploy --target sagemaker --stage staging|prod [--version N]
    mlops endpoints list
    mlops invoke --file digit.png [--stage S | --url URL]
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from mlops import stage_config
from mlops.cli.common import config, fail
from mlops.registry import RegistryError, get_registry
from mlops.serve import bluegreen
from mlops.serve import deploy as deployer
from mlops.serve.capture import CaptureConfig

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".json": "application/json",
                 ".npy": "application/x-npy", ".csv": "text/csv"}
DEFAULT_URL = "http://127.0.0.1:8080/invocations"


STAGE = click.option("--stage", type=click.Choice(list(stage_config.STAGES)), default=None,
                     help=f"Deploy stage [default: {stage_config.DEFAULT_STAGE}].")


@click.command()
@click.option("--target", type=click.Choice(["local", "sagemaker"]), default="local", show_default=True,
              help="local: a stage endpoint on this machine; sagemaker: the stage's endpoint stack (CloudFormation).")
@STAGE
@click.option("--group", default=None, help="Model package group [default: --model-package-group].")
@click.option("--version", type=click.IntRange(min=1), default=None, help="Model version (default: newest Approved).")
@click.option("--host", default="127.0.0.1", show_default=True, help="local: the address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="local: the endpoint's port [default: the stage config's Local.Port: staging 8080, prod 8081].")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="local: model server workers "
              "[default: cores, min 2].")
@click.option("--name", default=None, help="Endpoint name [default: <group>-<stage>].")
@click.option("--background", is_flag=True, help="local: return once it serves (the endpoint runs on, detached).")
@click.option("--stop", "stop_it", is_flag=True, help="local: stop the stage's endpoint, then exit.")
@click.option("--data-capture-percentage", type=click.IntRange(0, 100), default=None,
              help="local: share of requests captured [default: the stage config's DataCaptureSamplingPercentage].")
@click.option("--smoke-max-p99-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="local prod: the pre-traffic smoke test's p99 limit [default: the stage config's].")
@click.option("--stack-name", default=None, help="sagemaker: the endpoint stack [default: <endpoint name>-endpoint].")
@click.option("--cfn-role-arn", envvar="MLOPS_CFN_ROLE_ARN", default=None,
              help="sagemaker: role CloudFormation deploys the stack as [default: the roles stack's export].")
@click.option("--no-wait", is_flag=True, help="sagemaker: return once the stack operation has started.")
@click.pass_context
def deploy(ctx: click.Context, target: str, stage: str | None, group: str | None, version: int | None, host: str,
           port: int | None, workers: int | None, name: str | None, background: bool, stop_it: bool,
           data_capture_percentage: int | None, smoke_max_p99_ms: float | None, stack_name: str | None,
           cfn_role_arn: str | None, no_wait: bool) -> None:
    """Deploy an Approved model version to a stage: staging (Approved is enough) or prod (smoke test + gate).

    Without --stage the stage is staging, so `mlops deploy --target local` serves the newest Approved version on
    127.0.0.1:8080 as before. Updates are blue/green: the new version starts beside the old one, is checked, then
    takes the traffic; a new version that fails leaves the old one serving.
    """
    cfg = config(ctx)
    group = group or cfg.model_package_group
    stage = stage or stage_config.DEFAULT_STAGE
    name = name or stage_config.endpoint_name(group, stage)
    if target == "sagemaker":
        if stop_it or background:
            fail("--stop and --background are for --target local (delete the stack to remove a SageMaker endpoint)")
        _deploy_sagemaker(cfg, group, stage, version, name, stack_name, cfn_role_arn, no_wait)
        return
    try:
        if stop_it:
            pids = bluegreen.stop(name)
            click.echo(f"stopped endpoint {name} (pids {', '.join(map(str, pids))})" if pids
                       else f"endpoint {name} is not running")
            return
        options = bluegreen.Options(host=host, port=port, workers=workers, bucket=cfg.for_local().bucket,
                                    sampling_percentage=data_capture_percentage, smoke_max_p99_ms=smoke_max_p99_ms,
                                    name=name)
        state = bluegreen.deploy(get_registry("local"), group, stage, version, options,
                                 say=lambda line: click.echo(line, err=True))
    except (deployer.DeployError, RegistryError, stage_config.StageConfigError) as exc:
        fail(str(exc))
    last = state.get("LastDeployment") or {}
    if not state.get("Unchanged"):
        seconds = last.get("Seconds") or {}
        click.echo(f"endpoint {name} ({stage}) serves {group} version {state['ModelPackageVersion']} at "
                   f"{state['Url']} (deployed in {seconds.get('Total', 0):.1f} s)\n"
                   f"data capture: {state['DataCapture']['InitialSamplingPercentage']}% to "
                   f"{CaptureConfig.from_json(state['DataCapture']).prefix_uri}")
    next_step = {"staging": f"mlops smoke-test --target local --stage staging{'' if group == cfg.model_package_group else ' --group ' + group}",
                 "prod": "mlops endpoints list"}[stage]
    if background:
        click.echo(f"next: {next_step}\nstop: mlops deploy --stop --stage {stage}")
        return
    click.echo(f"serving on http://{state['Host']}:{state['Port']} (/ping, /invocations); Ctrl-C stops", err=True)
    bluegreen.attach(name)


def _deploy_sagemaker(cfg, group: str, stage: str, version: int | None, name: str, stack_name: str | None,
                      cfn_role_arn: str | None, no_wait: bool) -> None:
    from mlops.aws import endpoint_stack

    try:
        deployer_ = endpoint_stack.EndpointStackDeployer(region=cfg.region)
        result = deployer_.deploy(group, stage, version=version, endpoint=name, stack_name=stack_name,
                                  cfn_role_arn=cfn_role_arn, bucket=cfg.bucket, wait=not no_wait,
                                  say=lambda line: click.echo(line, err=True))
    except (endpoint_stack.StackError, RegistryError, stage_config.StageConfigError) as exc:
        fail(str(exc))
    click.echo(json.dumps(result, indent=2, default=str))


@click.group()
def endpoints() -> None:
    """Stage endpoints: what serves where on this machine, and the SageMaker endpoint stacks' parameters."""


@endpoints.command("stack-config")
@click.option("--target", type=click.Choice(["sagemaker"]), default="sagemaker", show_default=True)
@click.option("--group", default=None, help="Model package group [default: --model-package-group].")
@click.option("--version", type=click.IntRange(min=1), default=None, help="Model version (default: newest Approved).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--project", default=None, help="ProjectName of the artifacts and roles stacks [default: the group].")
@click.pass_context
def stack_config(ctx: click.Context, target: str, group: str | None, version: int | None, output_dir: Path,
                 project: str | None) -> None:
    """Write the staging and prod endpoint stacks' template configurations for one Approved version.

    The deploy pipeline's build step: <stage>-config.json (CodePipeline's TemplateConfiguration: Parameters, Tags)
    for every stage, and selected.env (MODEL_PACKAGE_ARN, MODEL_PACKAGE_VERSION) for its exported variables.
    """
    from mlops.aws import endpoint_stack

    cfg = config(ctx)
    group = group or cfg.model_package_group
    try:
        written = endpoint_stack.write_stack_configs(cfg.region, group, version, output_dir, project or group)
    except (endpoint_stack.StackError, RegistryError, stage_config.StageConfigError) as exc:
        fail(str(exc))
    for path in written:
        click.echo(f"wrote {path}")


@endpoints.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON records instead of a table.")
def list_endpoints(as_json: bool) -> None:
    """Each local endpoint's stage, version, port, status and data capture path."""
    rows = bluegreen.list_endpoints()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no local endpoints (mlops deploy --target local --stage staging)")
        return
    table = Table()
    for column in ("endpoint", "stage", "version", "port", "status", "capture", "data capture path", "last deployment"):
        table.add_column(column, justify="right" if column in ("version", "port", "capture") else "left")
    for row in rows:
        last = row.get("LastDeployment") or {}
        deployed = last.get("Result", "-")
        if last.get("Result") == "Succeeded":
            deployed += f" in {(last.get('Seconds') or {}).get('Total', 0):.1f} s"
        elif last.get("FailedStep"):
            deployed += f" ({last['FailedStep']} of v{last.get('Version')})"
        table.add_row(row["EndpointName"], row["Stage"], str(row["ModelPackageVersion"]), str(row["Port"]),
                      row["Status"], f"{row['SamplingPercentage']}%", row["CapturePath"] or "-", deployed)
    Console(width=180).print(table)


@click.command()
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Request body: a .png/.jpg image, .json, .npy or .csv.")
@click.option("--content-type", default=None, help="Content-Type [default: from the file extension].")
@click.option("--accept", default="application/json", show_default=True)
@click.option("--url", default=None, help=f"The endpoint's /invocations URL [default: {DEFAULT_URL}].")
@click.option("--stage", type=click.Choice(list(stage_config.STAGES)), default=None,
              help="Send it to this stage's local endpoint (its URL from `mlops endpoints list`).")
@click.option("--group", default=None, help="With --stage: the model package group [default: --model-package-group].")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.pass_context
def invoke(ctx: click.Context, path: Path, content_type: str | None, accept: str, url: str | None, stage: str | None,
           group: str | None, timeout: float) -> None:
    """Send one request to the endpoint and print its JSON answer."""
    if stage:
        name = stage_config.endpoint_name(group or config(ctx).model_package_group, stage)
        state = deployer.read_state(name)
        if url or not state:
            fail("give --url or --stage, not both" if url else f"no local endpoint {name}: mlops deploy --stage {stage}")
        url = state["Url"]
    url = url or DEFAULT_URL
    content_type = content_type or CONTENT_TYPES.get(path.suffix.lower())
    if content_type is None:
        fail(f"cannot tell the content type of {path.name}; pass --content-type "
              f"({', '.join(sorted(set(CONTENT_TYPES.values())))})")
    request = urllib.request.Request(url, data=path.read_bytes(), method="POST",
                                     headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")
        fail(f"{url} answered {exc.code}: {detail}")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(f"cannot reach {url}: {reason} (is the endpoint running? mlops deploy --target local)")
    try:
        click.echo(json.dumps(json.loads(body), indent=2))
    except json.JSONDecodeError:
        click.echo(body.decode("utf-8", errors="replace"))
