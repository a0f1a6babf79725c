"""Processing steps: CreateProcessingJob run as a local process.

The container's filesystem is a folder of the step (``<work>/container/``): every ProcessingInput is
downloaded from the store to its LocalPath there, every ProcessingOutput's LocalPath is created there, and
arguments or entrypoint items that name a container path (``/opt/ml/processing/...``, or any declared
LocalPath) are rewritten to the folder. ``python``/``python3`` entrypoints run with this interpreter.
After a clean exit each output folder is uploaded to its S3Uri in the store, prefix by prefix.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mlops import store
from mlops.local import records
from mlops.local.jobs import JobFailed, extract_tar, run_process
from mlops.local.runtime import StepResult, StepRun, thread_env

CONTAINER_ROOT = "/opt/ml"
PYTHON_NAMES = ("python", "python3", f"python{sys.version_info.major}.{sys.version_info.minor}")


class PathMap:
    """Container paths -> local folders; the longest declared prefix wins, /opt/ml is the fallback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}

    def add(self, container_path: str) -> Path:
        container_path = "/" + container_path.strip("/")
        local = self.root / container_path.lstrip("/")
        self.paths[container_path] = local
        return local

    def local(self, container_path: str) -> Path:
        return self.paths.get("/" + container_path.strip("/")) or self.root / container_path.lstrip("/")

    def rewrite(self, item: str) -> str:
        """Rewrite ``/container/path[/more]`` and ``--flag=/container/path``; leave everything else."""
        if "=" in item and not item.startswith("/"):
            flag, _, value = item.partition("=")
            rewritten = self.rewrite(value)
            return item if rewritten == value else f"{flag}={rewritten}"
        if not item.startswith("/"):
            return item
        for prefix in sorted(self.paths, key=len, reverse=True):
            if item == prefix or item.startswith(prefix + "/"):
                return str(self.paths[prefix]) + item[len(prefix):]
        if item == CONTAINER_ROOT or item.startswith(CONTAINER_ROOT + "/"):
            return str(self.root) + item
        return item


def _download_input(item: dict[str, Any], paths: PathMap) -> dict[str, Any]:
    name = item.get("InputName", "?")
    s3_input = item.get("S3Input")
    if not s3_input:
        raise JobFailed(f"ProcessingInputs[{name}]: only S3Input is supported locally, got {sorted(item)}")
    uri, local_path = s3_input.get("S3Uri"), s3_input.get("LocalPath")
    if not isinstance(uri, str) or not isinstance(local_path, str):
        raise JobFailed(f"ProcessingInputs[{name}]: S3Uri and LocalPath must be strings, got {uri!r}, {local_path!r}")
    for key, supported in (("S3DataType", "S3Prefix"), ("S3InputMode", "File"), ("S3CompressionType", "None")):
        if s3_input.get(key, supported) != supported:
            raise JobFailed(f"ProcessingInputs[{name}]: {key}={s3_input[key]!r} is not supported locally "
                            f"(only {supported})")
    destination = paths.add(local_path)
    try:
        files = store.download(uri, destination)
    except (FileNotFoundError, ValueError) as exc:
        raise JobFailed(f"ProcessingInputs[{name}]: {exc}") from exc
    if name == "code" and len(files) == 1 and files[0].name.endswith((".tar.gz", ".tgz")):
        extract_tar(files[0], destination)  # a source bundle given as one archive
    return {"InputName": name, "S3Uri": uri, "LocalPath": local_path, "Files": len(files)}


def run(step: StepRun) -> StepResult:
    args = step.arguments
    name = step.job_name()
    root = step.work_dir / "container"
    paths = PathMap(root)
    created = time.time()
    inputs = [_download_input(item, paths) for item in args.get("ProcessingInputs") or []]
    outputs = (args.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    for output in outputs:
        s3_output = output.get("S3Output") or {}
        if not isinstance(s3_output.get("LocalPath"), str) or not isinstance(s3_output.get("S3Uri"), str):
            raise JobFailed(f"ProcessingOutputConfig output {output.get('OutputName')!r}: S3Output needs "
                            f"LocalPath and S3Uri strings, got {s3_output!r}")
        paths.add(s3_output["LocalPath"]).mkdir(parents=True, exist_ok=True)

    app = args.get("AppSpecification") or {}
    entrypoint = [paths.rewrite(str(x)) for x in app.get("ContainerEntrypoint") or []]
    if not entrypoint:
        raise JobFailed("AppSpecification.ContainerEntrypoint is empty: nothing to run locally")
    if Path(entrypoint[0]).name in PYTHON_NAMES:
        entrypoint[0] = sys.executable
    argv = entrypoint + [paths.rewrite(str(x)) for x in app.get("ContainerArguments") or []]

    asked = time.perf_counter()
    lease = (step.claim.acquire() if step.claim is not None
             else step.pool.acquire(name=step.step_name))
    cpus = lease.cpus
    cpu_wait_s = time.perf_counter() - asked
    try:
        env = dict(os.environ)
        env.update({k: str(v) for k, v in (args.get("Environment") or {}).items()})
        env.update(thread_env(cpus))
        env["PYTHONUNBUFFERED"] = "1"
        config_dir = root / "opt/ml/config"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / "processingjobconfig.json").write_text(json.dumps({**args, "ProcessingJobName": name},
                                                                        indent=2, default=str))
        records.start_job(name, "Processing", step.execution_id, step.step_name, log_path=str(step.log_path))
        started = records.job_running(name)
        step.reporter.step_progress(step.step_name, f"{cpus} cpu")
        stopping = args.get("StoppingCondition") or {}
        try:
            process_s = run_process(argv, cwd=root, env=env, log_path=step.log_path,
                        timeout_s=stopping.get("MaxRuntimeInSeconds"), what="processing job")
        except JobFailed as exc:
            records.finish_job(name, "Failed", failure_reason=exc.reason)
            raise
    finally:
        lease.release()

    for output in outputs:
        s3_output = output["S3Output"]
        store.upload_dir(paths.local(s3_output["LocalPath"]), s3_output["S3Uri"])
    ended = time.time()
    properties = {
        "ProcessingJobName": name,
        "ProcessingJobArn": records.job_arn("Processing", name),
        "ProcessingJobStatus": "Completed",
        "ProcessingInputs": args.get("ProcessingInputs") or [],
        "ProcessingOutputConfig": args.get("ProcessingOutputConfig") or {"Outputs": []},
        "ProcessingResources": args.get("ProcessingResources"),
        "AppSpecification": app,
        "Environment": args.get("Environment") or {},
        "RoleArn": args.get("RoleArn"),
        "StoppingCondition": args.get("StoppingCondition"),
        "CreationTime": created,
        "ProcessingStartTime": started,
        "ProcessingEndTime": ended,
        "ExitMessage": "",
    }
    records.finish_job(name, "Completed", properties=properties, process_seconds=process_s)
    property_files = read_property_files(step.raw_step.property_files, properties)
    metadata = {"ProcessingJob": {"Arn": properties["ProcessingJobArn"]}, "Inputs": inputs, "Cpus": cpus,
                "ProcessSeconds": round(process_s, 4), "CpuWaitSeconds": round(cpu_wait_s, 4)}
    if property_files:
        metadata["PropertyFiles"] = property_files
    return StepResult(properties=properties, metadata=metadata)


def read_property_files(declared: list[dict[str, Any]], properties: dict[str, Any]) -> dict[str, Any]:
    """Parse each PropertyFile (a JSON file in a named output) so JsonGet can read it later."""
    found = {}
    outputs = {o.get("OutputName"): o for o in properties["ProcessingOutputConfig"].get("Outputs", [])}
    for spec in declared:
        name, output, path = spec.get("PropertyFileName"), spec.get("OutputName"), spec.get("FilePath")
        if output not in outputs:
            raise JobFailed(f"PropertyFile {name}: no output named {output!r} (have {sorted(outputs)})")
        uri = outputs[output]["S3Output"]["S3Uri"].rstrip("/") + "/" + str(path).lstrip("/")
        try:
            found[name] = json.loads(store.read_bytes(uri))
        except FileNotFoundError as exc:
            raise JobFailed(f"PropertyFile {name}: the job did not write {path} in output {output!r} ({uri})") from exc
        except json.JSONDecodeError as exc:
            raise JobFailed(f"PropertyFile {name}: {uri} is not valid JSON: {exc}") from exc
    return found
