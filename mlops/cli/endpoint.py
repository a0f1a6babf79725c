"""``mlops deploy`` and ``mlops invoke``: serve an Approved model locally, and send it a request.

    mlops deploy --target local [--version N] [--port 8080] [--workers N] [--background | --stop]
    mlops invoke --file digit.png [--content-type TYPE] [--url URL]
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import click

from mlops.cli.common import config, fail
from mlops.registry import RegistryError, get_registry
from mlops.serve import deploy as deployer

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".json": "application/json",
                 ".npy": "application/x-npy", ".csv": "text/csv"}
DEFAULT_URL = "http://127.0.0.1:8080/invocations"


@click.command()
@click.option("--target", type=click.Choice(["local"]), default="local", show_default=True,
              help="Where to deploy (SageMaker endpoints are deployed by infra/ on approval).")
@click.option("--group", default=None, help="Model package group [default: --model-package-group].")
@click.option("--version", type=click.IntRange(min=1), default=None, help="Model version (default: newest Approved).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Server workers [default: cores, min 2].")
@click.option("--name", default=None, help="Endpoint name (folder under $MLOPS_HOME/endpoints) [default: group].")
@click.option("--background", is_flag=True, help="Run detached (pidfile + log in the endpoint folder).")
@click.option("--stop", "stop_it", is_flag=True, help="Stop the background endpoint of this name, then exit.")
@click.pass_context
def deploy(ctx: click.Context, target: str, group: str | None, version: int | None, host: str, port: int,
           workers: int | None, name: str | None, background: bool, stop_it: bool) -> None:
    """Serve an Approved model version on a local SageMaker-style endpoint (GET /ping, POST /invocations)."""
    group = group or config(ctx).model_package_group
    try:
        if stop_it:
            pid = deployer.stop(name or group)
            click.echo(f"stopped endpoint {name or group} (pid {pid})" if pid else f"endpoint {name or group} is not running")
            return
        endpoint = deployer.prepare(get_registry("local"), group, version, name)
        click.echo(f"deploying {group} version {endpoint['ModelPackageVersion']} ({endpoint['ModelPackageArn']})\n"
                   f"model in {endpoint['ModelDir']}", err=True)
        if not background:
            click.echo(f"serving on http://{host}:{port} (/ping, /invocations); Ctrl-C stops", err=True)
        endpoint = deployer.start(endpoint, host, port, workers, background)
    except (deployer.DeployError, RegistryError) as exc:
        fail(str(exc))
    if background:
        click.echo(f"endpoint {endpoint['EndpointName']} up at {endpoint['Url']} (pid {endpoint['Pid']}, "
                   f"log {endpoint['Log']})\nnext: mlops invoke --file digit.png --url {endpoint['Url']}\n"
                   f"stop: mlops deploy --stop --name {endpoint['EndpointName']}")


@click.command()
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Request body: a .png/.jpg image, .json, .npy or .csv.")
@click.option("--content-type", default=None, help="Content-Type [default: from the file extension].")
@click.option("--accept", default="application/json", show_default=True)
@click.option("--url", default=DEFAULT_URL, show_default=True, help="The endpoint's /invocations URL.")
@click.option("--timeout", type=float, default=30.0, show_default=True)
def invoke(path: Path, content_type: str | None, accept: str, url: str, timeout: float) -> None:
    """Send one request to the endpoint and print its JSON answer."""
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
