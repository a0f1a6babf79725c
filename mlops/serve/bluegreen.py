"""Local stage endpoints (staging, prod) with blue/green updates, the way a SageMaker endpoint updates.

An endpoint is a folder ``$MLOPS_HOME/endpoints/<group>-<stage>/`` and two kinds of process: the router
(:mod:`mlops.serve.router`) on the stage's public port, and behind it the model server of the live version
(:mod:`mlops.serve.server`, on a private port). Deploying a version:

1. refuses what the stage does not allow (staging: Approved; prod: also passed staging's smoke test and its gate
   approved, see :func:`mlops.registry.base.promotion_problems`);
2. starts the new version's server beside the old one (green beside blue) and health-checks its /ping;
3. for gated stages, smoke-tests the new server directly, before it gets any traffic, and records the result;
4. switches traffic by replacing ``routes.json`` atomically (the router reads it on every request);
5. drains the old server: SIGTERM, gunicorn finishes the requests in flight, the router resends any request whose
   connection the old server closed, so none fails;
6. records ``endpoint.json`` (stage, version, port, status, capture config, the last deployment's timings).

A new version that fails step 2 or 3 is stopped and the old one keeps serving: the rollback is that traffic
never moved. Deployments of one endpoint are serialised by a lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlops import stage_config
from mlops.registry import RegistryError
from mlops.registry.base import GATED_STAGES
from mlops.serve import smoke
from mlops.serve.capture import CaptureConfig
from mlops.serve.deploy import (
    DeployError,
    choose_version,
    endpoint_dir,
    endpoints_root,
    free_port,
    is_process,
    port_free,
    prepare_model,
    read_state,
    spawn,
    terminate,
    wait_ready,
    write_state,
)
from training.atomic import atomic_write_json

ROUTER = "mlops.serve.router"
SERVER = "mlops.serve.server"
IN_SERVICE, UPDATING, STOPPED, FAILED = "InService", "Updating", "Stopped", "Failed"


@dataclass(frozen=True)
class Options:
    """How to run a stage endpoint; None means the stage config's value."""

    host: str = "127.0.0.1"
    port: int | None = None
    workers: int | None = None  # model server workers
    router_workers: int = 2
    bucket: str = "mlops-local"
    sampling_percentage: int | None = None
    health_timeout_s: float | None = None
    smoke_max_p99_ms: float | None = None
    name: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat()


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """One deployment (or stop) of an endpoint at a time."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployError(f"another deployment of {folder.name} is in progress; try again when it ends") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_locked(folder: Path) -> bool:
    path = folder / ".lock"
    if not path.exists():
        return False
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _start_server(folder: Path, version: int, model_dir: Path, host: str, workers: int | None,
                  timeout_s: float) -> dict[str, Any]:
    """Start a version's model server on a private port and wait for its /ping; stop it again if it fails."""
    port = free_port(host)
    backends = folder / "backends"
    pidfile, log = backends / f"v{version}-{port}.pid", backends / f"v{version}-{port}.log"
    command = ["-m", SERVER, "--model-dir", str(model_dir), "--host", host, "--port", str(port),
               "--pidfile", str(pidfile)]
    if workers:
        command += ["--workers", str(workers)]
    process = spawn(command, log)
    server = {"Version": version, "Port": port, "Pid": process.pid, "Url": f"http://{host}:{port}",
              "ModelDir": str(model_dir), "Log": str(log)}
    try:
        wait_ready(f"{server['Url']}/ping", timeout=timeout_s, process=process)
    except DeployError as exc:
        terminate(process.pid, SERVER, timeout=10)
        tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
        raise DeployError(f"{exc}; last lines of {log}:\n{tail}") from None
    return server


def _capture(stage: stage_config.StageConfig, name: str, options: Options) -> CaptureConfig:
    percentage = stage.sampling_percentage if options.sampling_percentage is None else options.sampling_percentage
    return CaptureConfig(destination=f"s3://{options.bucket}/{stage.capture_prefix}", endpoint=name,
                         sampling_percentage=percentage)


def _start_router(folder: Path, name: str, stage: str, host: str, port: int, capture: CaptureConfig,
                  workers: int) -> int:
    atomic_write_json(folder / "router.json", {"EndpointName": name, "Stage": stage,
                                               "RoutesFile": str(folder / "routes.json"),
                                               "DataCapture": capture.to_json()})
    command = ["-m", ROUTER, "--config", str(folder / "router.json"), "--host", host, "--port", str(port),
               "--workers", str(workers), "--pidfile", str(folder / "router.pid")]
    process = spawn(command, folder / "router.log")
    wait_ready(f"http://{host}:{port}/ping", timeout=60, process=process)
    return process.pid


def deploy(registry: Any, group: str, stage: str, version: int | None = None, options: Options = Options(),
           say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Deploy a version to a stage endpoint (start it, or update it blue/green). Returns the endpoint's state.

    Raises :class:`DeployError` for anything refused or failed; after a failed update the old version serves on.
    """
    config = stage_config.load(stage)
    name = options.name or stage_config.endpoint_name(group, stage)
    folder = endpoint_dir(name)
    record = choose_version(registry, group, version)  # refused before anything is written
    version = int(record["ModelPackageVersion"])
    if stage in GATED_STAGES:
        try:
            registry.check_promotable(record, stage)
        except RegistryError as exc:
            raise DeployError(str(exc)) from None
    with locked(folder):
        state = read_state(name) or {}
        router_up = is_process(state.get("RouterPid"), ROUTER)
        blue = state.get("Backend") if router_up and is_process((state.get("Backend") or {}).get("Pid"), SERVER) else None
        if blue and blue["Version"] == version:
            say(f"{name} already serves version {version}: nothing to do")
            return {**state, "Unchanged": True}
        host = state["Host"] if router_up else options.host
        port = state["Port"] if router_up else (options.port or config.local_port)
        if router_up and options.port and options.port != port:
            raise DeployError(f"{name} serves on port {port}; stop it first to move it (mlops deploy --stop "
                              f"--stage {stage})")
        if not router_up and not port_free(host, port):
            raise DeployError(f"{host}:{port} is already in use (another endpoint? `mlops endpoints list`)")
        capture = CaptureConfig.from_json(state["DataCapture"]) if router_up else _capture(config, name, options)
        timings: dict[str, float] = {}
        started = time.monotonic()
        model_dir = prepare_model(record, folder)
        say(f"starting version {version} beside {'version ' + str(blue['Version']) if blue else 'nothing'}")
        try:
            green = _start_server(folder, version, model_dir, host, options.workers,
                                  options.health_timeout_s or config.health_timeout_s)
        except DeployError as exc:
            _record_failure(folder, state, version, blue, "health check", str(exc))
            raise DeployError(f"version {version} failed its health check, traffic stays "
                              f"{_where(blue)}: {exc}") from None
        timings["StartAndHealthCheck"] = time.monotonic() - started
        if stage in GATED_STAGES:
            mark = time.monotonic()
            result = _pre_traffic_smoke_test(green, config, options, version)
            registry.record_smoke_test(group, version, stage, result.passed, result.summary + " (pre-traffic)",
                                       endpoint=f"{name} new fleet :{green['Port']}")
            timings["SmokeTest"] = time.monotonic() - mark
            if not result.passed:
                terminate(green["Pid"], SERVER, timeout=10)
                _record_failure(folder, state, version, blue, "smoke test", result.summary)
                raise DeployError(f"version {version} failed the pre-traffic smoke test, traffic stays "
                                  f"{_where(blue)}: {result.summary}")
            say(f"version {version} passed the pre-traffic smoke test: {result.summary}")
        mark = time.monotonic()
        generation = int((state.get("Routes") or {}).get("Generation", 0)) + 1
        routes = {"Generation": generation, "Version": version, "Backend": green["Url"],
                  "ModelPackageArn": record["ModelPackageArn"], "UpdatedAt": _now()}
        atomic_write_json(folder / "routes.json", routes)  # the switch: the router's next request goes to green
        timings["Switch"] = time.monotonic() - mark
        router_pid = state.get("RouterPid") if router_up else None
        if not router_up:
            try:
                router_pid = _start_router(folder, name, stage, host, port, capture, options.router_workers)
            except DeployError:
                terminate(green["Pid"], SERVER, timeout=10)
                raise
        mark = time.monotonic()
        if blue:
            say(f"traffic switched to version {version}; draining version {blue['Version']}")
            terminate(blue["Pid"], SERVER)
        timings["Drain"] = time.monotonic() - mark
        timings["Total"] = time.monotonic() - started
        new_state = {
            "EndpointName": name, "Stage": stage, "ModelPackageGroupName": group, "ModelPackageVersion": version,
            "ModelPackageArn": record["ModelPackageArn"], "Host": host, "Port": port,
            "Url": f"http://{host}:{port}/invocations", "RouterPid": router_pid,
            "RouterLog": str(folder / "router.log"), "Backend": green, "Routes": routes,
            "DataCapture": capture.to_json(), "Status": IN_SERVICE,
            "StartTime": state.get("StartTime") if router_up else _now(), "LastModifiedTime": _now(),
            "LastDeployment": {"Version": version, "PreviousVersion": blue["Version"] if blue else None,
                               "Result": "Succeeded", "Time": _now(),
                               "Seconds": {k: round(v, 3) for k, v in timings.items()}},
        }
        write_state(folder, new_state)
        return new_state


def _where(blue: dict[str, Any] | None) -> str:
    return f"on version {blue['Version']}" if blue else "where it was (nothing was serving)"


def _pre_traffic_smoke_test(green: dict[str, Any], config: stage_config.StageConfig, options: Options,
                            version: int) -> smoke.SmokeResult:
    transport = smoke.HttpTransport(f"{green['Url']}/invocations")
    try:
        return smoke.run(transport, options.smoke_max_p99_ms or config.smoke_max_p99_ms)
    except smoke.SmokeTestError as exc:
        result = smoke.SmokeResult(total=1, right=0, max_p99_ms=config.smoke_max_p99_ms, latencies_ms=[])
        result.failures.append(str(exc))
        return result
    finally:
        transport.close()


def _record_failure(folder: Path, state: dict[str, Any], version: int, blue: dict[str, Any] | None,
                    step: str, reason: str) -> None:
    if not state:
        return  # nothing deployed before: no endpoint state to annotate
    state = {**state, "LastDeployment": {"Version": version, "PreviousVersion": blue["Version"] if blue else None,
                                         "Result": "RolledBack", "FailedStep": step, "Reason": reason[:2000],
                                         "Time": _now()}}
    write_state(folder, state)


def attach(name: str, poll_s: float = 0.5) -> None:
    """Block while the endpoint serves (a foreground deploy); Ctrl-C or SIGTERM stops it."""
    import signal

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupted)
    try:
        while True:
            state = read_state(name) or {}
            if not is_process(state.get("RouterPid"), ROUTER):
                return
            time.sleep(poll_s)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop(name)


def stop(name: str) -> list[int]:
    """Stop an endpoint's router and every model server it started; returns the pids stopped."""
    folder = endpoint_dir(name)
    state = read_state(name)
    if state is None:
        return []
    stopped = []
    with locked(folder):
        if terminate(state.get("RouterPid"), ROUTER):
            stopped.append(int(state["RouterPid"]))
        for pidfile in sorted((folder / "backends").glob("*.pid")):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                if terminate(pid, SERVER):
                    stopped.append(pid)
        backend = (state.get("Backend") or {}).get("Pid")
        if terminate(backend, SERVER):
            stopped.append(int(backend))
        write_state(folder, {**state, "Status": STOPPED, "RouterPid": None, "LastModifiedTime": _now()})
    return stopped


def status(state: dict[str, Any]) -> str:
    folder = endpoint_dir(state["EndpointName"])
    if _is_locked(folder):
        return UPDATING
    router_up = is_process(state.get("RouterPid"), ROUTER)
    server_up = is_process((state.get("Backend") or {}).get("Pid"), SERVER)
    if router_up and server_up:
        return IN_SERVICE
    return FAILED if router_up or server_up else STOPPED


def list_endpoints() -> list[dict[str, Any]]:
    """Every local endpoint with its stage, version, port, live status and where its captures go."""
    rows = []
    root = endpoints_root()
    for path in sorted(root.glob("*/endpoint.json")) if root.is_dir() else []:
        state = read_state(path.parent.name)
        if not state or "Stage" not in state:
            continue
        capture = CaptureConfig.from_json(state["DataCapture"]) if state.get("DataCapture") else None
        rows.append({"EndpointName": state["EndpointName"], "Stage": state["Stage"],
                     "ModelPackageVersion": state.get("ModelPackageVersion"), "Port": state.get("Port"),
                     "Status": status(state), "Url": state.get("Url"),
                     "SamplingPercentage": capture.sampling_percentage if capture else None,
                     "CapturePath": capture.prefix_uri if capture else None,
                     "LastDeployment": state.get("LastDeployment")})
    return rows
