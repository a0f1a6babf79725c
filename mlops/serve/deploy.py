"""Deploy an Approved model version from the registry to the local endpoint.

Steps: pick the version (the one named, else the newest Approved; anything not Approved is refused), find its
model.tar.gz (InferenceSpecification.Containers[0].ModelDataUrl, an s3:// URI in the local store), extract it
safely into ``$MLOPS_HOME/endpoints/<name>/models/v<N>`` (tarfile's "data" filter, size cap, staged then
renamed), record ``endpoint.json``, and serve it with :mod:`mlops.serve.server` in the foreground or, with
``background=True``, as a detached process with a pidfile that :func:`stop` uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops import store
from mlops.registry import APPROVED
from training.atomic import atomic_write_json

MAX_MODEL_BYTES = 2 * 1024**3  # uncompressed; a model.tar.gz claiming more is refused before extraction
READY_TIMEOUT_S = 60


class DeployError(Exception):
    """Deployment refused or failed, with a message the operator can act on."""


def endpoints_root() -> Path:
    return store.mlops_home() / "endpoints"


def endpoint_dir(name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise DeployError(f"endpoint name {name!r} must be a plain folder name")
    return endpoints_root() / name


def choose_version(registry: Any, group: str, version: int | None) -> dict[str, Any]:
    """The named version if it is Approved, else the newest Approved one; refuses everything else."""
    if version is not None:
        record = registry.describe_model_package(group, version)
        if record["ModelApprovalStatus"] != APPROVED:
            raise DeployError(f"{group} version {version} is {record['ModelApprovalStatus']}, not {APPROVED}: "
                              f"approve it first (mlops registry approve --group {group} --version {version})")
        return record
    record = registry.latest_approved(group)
    if record is None:
        raise DeployError(f"no Approved version in model package group {group!r}: "
                          "see `mlops registry list` and approve one first")
    return record


def model_data_path(record: dict[str, Any]) -> Path:
    containers = (record.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers or not containers[0].get("ModelDataUrl"):
        raise DeployError(f"{record['ModelPackageArn']}: InferenceSpecification has no ModelDataUrl")
    uri = containers[0]["ModelDataUrl"]
    path = store.s3_uri_to_path(uri) if uri.startswith("s3://") else Path(uri.removeprefix("file://"))
    if not path.is_file():
        raise DeployError(f"model data {uri} not found in the local store ({path})")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_model(tar_path: Path, dest: Path) -> Path:
    """Unpack model.tar.gz into ``dest`` safely and atomically; reuse ``dest`` if it holds the same archive."""
    digest = _sha256(tar_path)
    marker = dest / ".model.tar.gz.sha256"
    if marker.is_file() and marker.read_text().strip() == digest:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                total = sum(m.size for m in tar.getmembers() if m.isfile())
                if total > MAX_MODEL_BYTES:
                    raise DeployError(f"{tar_path}: {total} bytes uncompressed exceeds {MAX_MODEL_BYTES}")
                tar.extractall(staging, filter="data")  # no absolute paths, no escaping links, no devices
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DeployError(f"{tar_path}: cannot extract model archive: {exc}") from exc
        if not (staging / "model_config.json").is_file():
            raise DeployError(f"{tar_path}: no model_config.json at the archive root (found "
                              f"{sorted(p.name for p in staging.iterdir())})")
        (staging / marker.name).write_text(digest + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def prepare(registry: Any, group: str, version: int | None, name: str | None = None) -> dict[str, Any]:
    """Everything before serving: choose, extract, check the handlers load it. Returns the endpoint record."""
    from mlops.serve.server import check_model_dir  # imports torch: only when a model is deployed

    record = choose_version(registry, group, version)
    name = name or group
    model_dir = extract_model(model_data_path(record), endpoint_dir(name) / "models" / f"v{record['ModelPackageVersion']}")
    try:
        check_model_dir(model_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise DeployError(f"model version {record['ModelPackageVersion']} is not servable: {exc}") from exc
    return {"EndpointName": name, "ModelPackageGroupName": group, "ModelPackageVersion": record["ModelPackageVersion"],
            "ModelPackageArn": record["ModelPackageArn"], "ModelDir": str(model_dir)}


def _write_state(endpoint: dict[str, Any]) -> Path:
    return atomic_write_json(endpoint_dir(endpoint["EndpointName"]) / "endpoint.json", endpoint)


def read_state(name: str) -> dict[str, Any] | None:
    path = endpoint_dir(name) / "endpoint.json"
    return json.loads(path.read_text()) if path.is_file() else None


def wait_ready(url: str, timeout: float = READY_TIMEOUT_S, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeployError(f"the endpoint exited with status {process.returncode} before answering /ping")
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise DeployError(f"{url} did not answer within {timeout:.0f} s")


def start(endpoint: dict[str, Any], host: str, port: int, workers: int | None, background: bool) -> dict[str, Any]:
    """Serve the prepared model: foreground (blocks until Ctrl-C) or detached with a pidfile."""
    from mlops.serve import server  # imports torch: only when a model is served

    if not port_free(host, port):
        raise DeployError(f"{host}:{port} is already in use (an endpoint still running? `mlops deploy --stop`)")
    folder = endpoint_dir(endpoint["EndpointName"])
    pidfile = folder / "server.pid"
    endpoint = {**endpoint, "Url": f"http://{host}:{port}/invocations", "Host": host, "Port": port,
                "Workers": workers or server.default_workers(), "PidFile": str(pidfile),
                "StartTime": datetime.now(UTC).isoformat()}
    if not background:
        _write_state(endpoint)
        server.serve(endpoint["ModelDir"], host, port, workers, pidfile=str(pidfile))
        return endpoint
    log_path = folder / "server.log"
    command = [sys.executable, "-m", "mlops.serve.server", "--model-dir", endpoint["ModelDir"], "--host", host,
               "--port", str(port), "--pidfile", str(pidfile)]
    if workers:
        command += ["--workers", str(workers)]
    root = Path(__file__).resolve().parents[2]  # the project, so `-m mlops.serve.server` imports without install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, env=env, cwd=root)
    try:
        wait_ready(f"http://{host}:{port}/ping", process=process)
    except DeployError as exc:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        tail = log_path.read_text(errors="replace")[-2000:]
        raise DeployError(f"{exc}; last lines of {log_path}:\n{tail}") from None
    endpoint["Pid"] = process.pid
    endpoint["Log"] = str(log_path)
    _write_state(endpoint)
    return endpoint


def _is_our_server(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"mlops.serve.server" in cmdline


def stop(name: str, timeout: float = 20.0) -> int | None:
    """Stop the background endpoint ``name`` (SIGTERM to the gunicorn master it recorded). Returns its pid."""
    pidfile = endpoint_dir(name) / "server.pid"
    state = read_state(name) or {}
    pid = int(pidfile.read_text().strip()) if pidfile.is_file() else state.get("Pid")
    if not pid or not _is_our_server(int(pid)):
        return None
    os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _is_our_server(int(pid)):
        time.sleep(0.1)
    if _is_our_server(int(pid)):
        raise DeployError(f"endpoint {name} (pid {pid}) did not stop within {timeout:.0f} s")
    return int(pid)
