"""What every local deployment needs: the version to serve, its model safely on disk, server processes.

The version is the one named, else the newest Approved (anything not Approved is refused). Its model.tar.gz
(InferenceSpecification.Containers[0].ModelDataUrl, an s3:// URI in the local store) is extracted safely into
``$MLOPS_HOME/endpoints/<name>/models/v<N>`` (tarfile's "data" filter, size cap, staged then renamed). Server
processes are detached, identified by their command line before any signal, stopped with SIGTERM then SIGKILL.
The stage flow on top (router, blue/green, gates) is :mod:`mlops.serve.bluegreen`.
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
    """Nothing listens there. SO_REUSEADDR as gunicorn binds: closed connections in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def prepare_model(record: dict[str, Any], folder: Path) -> Path:
    """Extract a version's model.tar.gz into ``folder/models/v<N>`` and check the handlers can load it."""
    from mlops.serve.server import check_model_dir  # imports torch: only when a model is deployed

    version = record["ModelPackageVersion"]
    model_dir = extract_model(model_data_path(record), folder / "models" / f"v{version}")
    try:
        check_model_dir(model_dir)
    except (OSError, ValueError, TypeError) as exc:
        raise DeployError(f"model version {version} is not servable: {exc}") from exc
    return model_dir


def write_state(folder: Path, state: dict[str, Any]) -> Path:
    return atomic_write_json(folder / "endpoint.json", state)


def read_state(name: str) -> dict[str, Any] | None:
    path = endpoint_dir(name) / "endpoint.json"
    return json.loads(path.read_text()) if path.is_file() else None


def wait_ready(url: str, timeout: float = READY_TIMEOUT_S, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DeployError(f"the server exited with status {process.returncode} before answering /ping")
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise DeployError(f"{url} did not answer within {timeout:.0f} s")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, for a model server behind the endpoint's router."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def project_env() -> tuple[Path, dict[str, str]]:
    """The project root and an environment in which ``python -m mlops...`` imports without an install."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return root, env


def spawn(command: list[str], log_path: Path) -> subprocess.Popen:
    """Start a detached server process (own session: it outlives this command) logging to ``log_path``."""
    root, env = project_env()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, *command], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env, cwd=root)


def is_process(pid: int | None, module: str) -> bool:
    """True when ``pid`` is alive and runs ``python -m <module>`` (never signal a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
        status = Path(f"/proc/{int(pid)}/status").read_text()
    except OSError:
        return False
    if "\nState:\tZ" in status:  # exited, not yet reaped by its parent
        return False
    return module.encode() in cmdline


def terminate(pid: int | None, module: str, timeout: float = 30.0) -> bool:
    """SIGTERM (gunicorn: finish in-flight requests, then exit), SIGKILL after ``timeout`` like SageMaker."""
    if not is_process(pid, module):
        return False
    os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_process(pid, module):
        time.sleep(0.05)
    if is_process(pid, module):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)
    return True
