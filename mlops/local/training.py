"""Training jobs (CreateTrainingJob) run as local processes, started the way SageMaker's containers start them.

The job folder is the container's /opt/ml (SAGEMAKER_BASE_DIR): ``input/config/{hyperparameters,
resourceconfig,inputdataconfig}.json`` as SageMaker writes them, each channel downloaded to
``input/data/<channel>``, ``model/`` and ``output/``. The image's own launcher (:mod:`mlops.local.containers`:
sagemaker-training for PyTorch/TensorFlow script mode, sagemaker-containers' module rule for XGBoost) then
downloads the source bundle, computes SM_* and runs ``sagemaker_program``. With InstanceCount > 1 every host
is its own process with its own folder and resourceconfig.json. Metrics are read from the log with the job's
MetricDefinitions regexes while it runs (progress, early stopping) and again at the end (FinalMetricDataList).
The model dir becomes ``{S3OutputPath}/{job}/output/model.tar.gz``, the output data dir ``output.tar.gz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from mlops import store
from mlops.local import records
from mlops.local.cpus import Claim, CpuPool
from mlops.local.instrument import JobInstruments
from mlops.local.jobs import STOPPING, JobFailed, pack_dir, run_process
from mlops.local.runtime import Reporter, StepResult, StepRun, thread_env
from training.atomic import atomic_write_json
from training.job_env import CPU_GRANT_FILE_ENV
from training.metrics import parse_metrics

CURRENT_HOST = "algo-1"
MAX_LOCAL_HOSTS = 8


def decode_hyperparameters(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """SageMaker hyperparameters are strings holding JSON; the toolkit decodes each, falling back to the text."""
    decoded = {}
    for key, value in hyperparameters.items():
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            decoded[key] = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            decoded[key] = text
    return decoded


def user_hyperparameters(decoded: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in decoded.items() if not k.startswith("sagemaker_")}


class MetricStream:
    """Reads metrics from log lines as they arrive; keeps every value per metric name, in order."""

    def __init__(self, definitions: list[dict[str, str]]) -> None:
        self.definitions = [(d["Name"], re.compile(d["Regex"])) for d in definitions if d.get("Regex")]
        self.series: dict[str, list[float]] = {}
        self.lines = 0

    def feed(self, line: str) -> dict[str, float]:
        found = {}
        for name, regex in self.definitions:
            for match in regex.findall(line):
                try:
                    value = float(match if isinstance(match, str) else match[0])
                except ValueError:
                    continue
                self.series.setdefault(name, []).append(value)
                found[name] = value
        if found:
            self.lines += 1
        return found


def _progress_text(found: dict[str, float], line: str, epochs: Any) -> str:
    epoch = re.search(r"epoch=(\d+)", line)
    parts = []
    if epoch:
        parts.append(f"epoch {epoch.group(1)}" + (f"/{epochs}" if epochs else ""))
    for name, value in found.items():
        if name != "epoch":
            parts.append(f"{name} {value:.4f}")
    return " ".join(parts)


def run_training_job(request: dict[str, Any], *, job_name: str, execution_id: str, step_name: str, work_dir: Path,
                     log_path: Path, pool: CpuPool, reporter: Reporter, progress_label: str,
                     parent_job: str | None = None, claim: Claim | None = None,
                     on_metrics: Callable[[dict[str, list[float]]], bool] | None = None,
                     cpu_cap: int | None = None) -> dict[str, Any]:
    """Run one training job to completion and return its DescribeTrainingJob-like record.

    ``on_metrics`` (tuning's early stopping) sees the metric series after each metrics line; True stops
    the job. Raises :class:`JobFailed` when the job fails (the record is kept in the jobs table).
    """
    created = time.time()
    hyperparameters = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in
                       (request.get("HyperParameters") or {}).items()}
    decoded = decode_hyperparameters(hyperparameters)
    algorithm = request.get("AlgorithmSpecification") or {}
    definitions = algorithm.get("MetricDefinitions") or []
    records.start_job(job_name, "Training", execution_id, step_name, parent_job=parent_job,
                      hyperparameters=hyperparameters, log_path=str(log_path))
    stream = MetricStream(definitions)
    started = created
    process_s = cpu_wait_s = 0.0
    instruments = JobInstruments.from_request(request, job_name, work_dir)  # Debugger + Profiler, if configured
    instrumented: dict[str, Any] = {}
    try:
        if not isinstance(decoded.get("sagemaker_program"), str) or \
                not isinstance(decoded.get("sagemaker_submit_directory"), str):
            raise JobFailed("HyperParameters must name sagemaker_program and sagemaker_submit_directory (script "
                            f"mode); got {sorted(decoded)}")
        output_path = (request.get("OutputDataConfig") or {}).get("S3OutputPath")
        if not isinstance(output_path, str):
            raise JobFailed(f"OutputDataConfig.S3OutputPath must be an s3:// URI, got {output_path!r}")
        hosts = host_names(job_name, _instance_count(request))
        bases = [work_dir] if len(hosts) == 1 else [work_dir / "hosts" / f"algo-{i}" for i in range(1, len(hosts) + 1)]
        for base in bases:
            for folder in (base / "input" / "config", base / "model", base / "output" / "data"):
                folder.mkdir(parents=True, exist_ok=True)
            _fetch_channels(request.get("InputDataConfig") or [], base / "input" / "data")
        epochs = user_hyperparameters(decoded).get("epochs")

        asked = time.perf_counter()
        # One host may grow into cores that fall idle (mlops/local/cpus.py); several split a fixed grant.
        grant_file = work_dir / "cpu-grant" if len(hosts) == 1 else None
        lease = (claim.acquire(cap=cpu_cap, grant_file=grant_file) if claim is not None
                 else pool.acquire(cap=cpu_cap, grant_file=grant_file, name=job_name))
        cpus = lease.cpus
        cpu_wait_s = time.perf_counter() - asked
        try:
            started = records.job_running(job_name)
            for base, host in zip(bases, hosts, strict=True):
                write_container_config(base / "input" / "config", request, hyperparameters, hosts, host)
            reporter.step_progress(progress_label, f"{cpus} cpu" + (f", {len(hosts)} hosts" if len(hosts) > 1 else "")
                                   + ", starting")

            def on_line(line: str) -> bool | str:
                if instruments is not None and instruments.stop_reason:
                    return instruments.stop_reason
                found = stream.feed(line)
                if not found:
                    return False
                reporter.step_progress(progress_label, _progress_text(found, line, epochs))
                return bool(on_metrics and on_metrics(stream.series))

            timeout = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
            launcher = container_launcher(request)
            per_host = max(1, cpus // len(hosts))
            envs = []
            for base, host in zip(bases, hosts, strict=True):
                env = _environment(job_name, base, per_host, request, host, hosts)
                if grant_file is not None:
                    env[CPU_GRANT_FILE_ENV] = str(grant_file)
                if instruments is not None and base == bases[0]:
                    env.update(instruments.environment())
                envs.append(env)
            process_s = _run_hosts(launcher, bases, envs, log_path, on_line, timeout,
                                   instruments.started if instruments is not None else None)
            if len(bases) > 1:
                _merge_host_models(bases, work_dir)
        finally:
            try:
                if instruments is not None:
                    instrumented = instruments.finish(cpus)
            finally:
                lease.release()
    except JobFailed as exc:
        metrics = _final_metrics(log_path, definitions) or stream.series
        if exc.status == "Stopped" and STOPPING.is_set():  # the whole execution is being stopped
            records.finish_job(job_name, "Stopped", failure_reason=exc.reason, metrics=metrics,
                               final_metrics=_last(metrics))
            raise
        if exc.status == "Stopped":
            # Early stopping keeps what the job saved so far, as SageMaker does.
            record = _package(request, job_name, work_dir, created, started, metrics, hyperparameters, "Stopped")
            record.update(instrumented)
            records.finish_job(job_name, "Stopped", failure_reason=exc.reason, metrics=metrics,
                               final_metrics=_last(metrics), properties=record)
            record["FailureReason"] = exc.reason
            return record
        records.finish_job(job_name, "Failed", failure_reason=exc.reason, metrics=metrics,
                           final_metrics=_last(metrics))
        raise
    except OSError as exc:
        records.finish_job(job_name, "Failed", failure_reason=str(exc))
        raise
    metrics = _final_metrics(log_path, definitions)
    record = _package(request, job_name, work_dir, created, started, metrics, hyperparameters, "Completed")
    record.update(instrumented)
    records.finish_job(job_name, "Completed", metrics=metrics, final_metrics=_last(metrics), properties=record,
                       process_seconds=process_s, cpu_wait_seconds=cpu_wait_s)
    # local extras, popped by run(): what the benchmark needs to separate our overhead from the job's time
    record["ProcessSeconds"], record["Cpus"], record["CpuWaitSeconds"] = round(process_s, 4), cpus, round(cpu_wait_s, 4)
    record["PeakCpus"] = lease.peak  # grown into cores that fell idle (mlops/local/cpus.py)
    return record


def _last(metrics: dict[str, list[float]]) -> dict[str, float]:
    return {name: values[-1] for name, values in metrics.items() if values}


def _final_metrics(log_path: Path, definitions: list[dict[str, str]]) -> dict[str, list[float]]:
    """What SageMaker would chart: every regex match in the job's own output (our [mlops] lines excluded)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return {}
    text = "\n".join(line for line in text.splitlines() if not line.startswith("[mlops]"))
    return parse_metrics(text, definitions)


def _package(request: dict[str, Any], job_name: str, work_dir: Path, created: float, started: float,
             metrics: dict[str, list[float]], hyperparameters: dict[str, str], status: str) -> dict[str, Any]:
    output_path = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    model_uri = f"{output_path}/{job_name}/output/model.tar.gz"
    output_uri = f"{output_path}/{job_name}/output/output.tar.gz"
    archive_dir = work_dir / "archives"
    store.upload_file(pack_dir(work_dir / "model", archive_dir / "model.tar.gz"), model_uri)
    store.upload_file(pack_dir(work_dir / "output" / "data", archive_dir / "output.tar.gz"), output_uri)
    ended = time.time()
    return {
        "TrainingJobName": job_name,
        "TrainingJobArn": records.job_arn("Training", job_name),
        "TrainingJobStatus": status,
        "SecondaryStatus": status,
        "ModelArtifacts": {"S3ModelArtifacts": model_uri},
        "OutputDataConfig": request.get("OutputDataConfig"),
        "HyperParameters": hyperparameters,
        "AlgorithmSpecification": request.get("AlgorithmSpecification"),
        "InputDataConfig": request.get("InputDataConfig"),
        "ResourceConfig": request.get("ResourceConfig"),
        "StoppingCondition": request.get("StoppingCondition"),
        "RoleArn": request.get("RoleArn"),
        "CreationTime": created,
        "TrainingStartTime": started,
        "TrainingEndTime": ended,
        "TrainingTimeInSeconds": round(ended - started),
        "BillableTimeInSeconds": round(ended - started),
        "FinalMetricDataList": [{"MetricName": name, "Value": values[-1], "Timestamp": ended}
                                for name, values in metrics.items() if values],
        "OutputDataUri": output_uri,
    }


def _fetch_channels(channels: list[dict[str, Any]], data_dir: Path) -> dict[str, Path]:
    found = {}
    for channel in channels:
        name = channel.get("ChannelName")
        source = (channel.get("DataSource") or {}).get("S3DataSource") or {}
        uri = source.get("S3Uri")
        if not name or not isinstance(uri, str):
            raise JobFailed(f"InputDataConfig channel {name!r}: needs ChannelName and an S3 S3Uri, got {channel!r}")
        if source.get("S3DataType", "S3Prefix") != "S3Prefix" or channel.get("CompressionType", "None") != "None":
            raise JobFailed(f"channel {name}: only S3DataType S3Prefix without compression is supported locally, "
                            f"got {source.get('S3DataType')!r}/{channel.get('CompressionType')!r}")
        try:
            store.download(uri, data_dir / name)
        except (FileNotFoundError, ValueError) as exc:
            raise JobFailed(f"channel {name}: {exc}") from exc
        found[name] = data_dir / name
    return found


def container_launcher(request: dict[str, Any]) -> str:
    """Which container launcher the job's image would run (see :mod:`mlops.local.containers`)."""
    image = str((request.get("AlgorithmSpecification") or {}).get("TrainingImage") or "")
    for marker, launcher in (("xgboost", "xgboost"), ("pytorch-training", "pytorch"),
                             ("tensorflow-training", "tensorflow")):
        if marker in image:
            return launcher
    return "generic"


def _instance_count(request: dict[str, Any]) -> int:
    value = (request.get("ResourceConfig") or {}).get("InstanceCount", 1)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise JobFailed(f"ResourceConfig.InstanceCount must be a whole number, got {value!r}") from None
    if not 1 <= count <= MAX_LOCAL_HOSTS:
        raise JobFailed(f"ResourceConfig.InstanceCount={count}: a local job runs 1 to {MAX_LOCAL_HOSTS} hosts")
    return count


def host_names(job_name: str, count: int) -> list[str]:
    """SageMaker's names (algo-1) for one host. Several hosts must reach each other by name, and nothing
    resolves algo-N here, so each gets a loopback address of its own (127.a.b.N, a and b from the job name)."""
    if count == 1:
        return [CURRENT_HOST]
    digest = hashlib.sha1(job_name.encode()).digest()
    return [f"127.{digest[0]}.{digest[1]}.{index}" for index in range(1, count + 1)]


def write_container_config(config_dir: Path, request: dict[str, Any], hyperparameters: dict[str, str],
                           hosts: list[str], current_host: str) -> None:
    """The files SageMaker writes under /opt/ml/input/config for every host of a training job."""
    instance_type = (request.get("ResourceConfig") or {}).get("InstanceType") or "ml.m5.xlarge"
    group = "homogeneousCluster"
    resource = {"current_host": current_host, "current_instance_type": instance_type,
                "current_group_name": group, "hosts": hosts,
                "instance_groups": [{"instance_group_name": group, "instance_type": instance_type, "hosts": hosts}],
                "network_interface_name": "lo" if len(hosts) > 1 else "eth0"}
    channels = {c["ChannelName"]: {"TrainingInputMode": "File", "S3DistributionType": (
        ((c.get("DataSource") or {}).get("S3DataSource") or {}).get("S3DataDistributionType") or "FullyReplicated"),
        "RecordWrapperType": "None"} for c in request.get("InputDataConfig") or []}
    atomic_write_json(config_dir / "hyperparameters.json", hyperparameters)
    atomic_write_json(config_dir / "resourceconfig.json", resource)
    atomic_write_json(config_dir / "inputdataconfig.json", channels)


def _environment(job_name: str, base: Path, cpus: int, request: dict[str, Any], host: str,
                 hosts: list[str]) -> dict[str, str]:
    """The process environment of one host: the image's, pointed at the job's folder instead of /opt/ml."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (request.get("Environment") or {}).items()})
    env.update(thread_env(cpus))
    env.update({
        "SAGEMAKER_BASE_DIR": str(base),
        "MLOPS_HOME": str(store.mlops_home()),  # the launcher's s3:// downloads; the job's cwd is its own folder
        "MLOPS_GRANTED_CPUS": str(cpus),
        "SM_STUDIO_LOCAL_MODE": "True",  # the toolkit's own switch: no DNS wait for host names
        "TRAINING_JOB_NAME": job_name,
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
    })
    if len(hosts) > 1:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _run_hosts(launcher: str, bases: list[Path], envs: list[dict[str, str]], log_path: Path,
               on_line: Callable[[str], bool | str], timeout: Any, on_start: Callable[[int], None] | None) -> float:
    """Every host's container process at once; the first that fails stops the others (their collectives would
    wait forever). The leader's output is the job log and feeds the metrics; the others log beside it."""
    command = [sys.executable, "-m", "mlops.local.containers", launcher]
    if len(bases) == 1:
        return run_process(command, cwd=bases[0], env=envs[0], log_path=log_path, on_line=on_line,
                           timeout_s=timeout, failure_file=bases[0] / "output" / "failure", what="training job",
                           on_start=on_start)
    pids: list[int] = []
    failed = threading.Event()

    def started(pid: int, leader: bool) -> None:
        pids.append(pid)
        if leader and on_start is not None:
            on_start(pid)

    def host(index: int) -> float:
        try:
            return run_process(command, cwd=bases[index], env=envs[index],
                               log_path=log_path if index == 0 else log_path.with_name(f"job-algo-{index + 1}.log"),
                               on_line=(on_line if index == 0 else None), timeout_s=timeout,
                               failure_file=bases[index] / "output" / "failure",
                               what=f"training job (host algo-{index + 1})",
                               on_start=lambda pid: started(pid, index == 0))
        except JobFailed:
            if not failed.is_set():
                failed.set()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGTERM)
            raise

    with ThreadPoolExecutor(max_workers=len(bases), thread_name_prefix="host") as pool:
        futures = [pool.submit(host, index) for index in range(len(bases))]
        wait(futures)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        first = next((e for e in errors if isinstance(e, JobFailed) and "SIGTERM" not in e.reason), errors[0])
        raise first
    return max(f.result() for f in futures)


def _merge_host_models(bases: list[Path], work_dir: Path) -> None:
    """SageMaker uploads /opt/ml/model of every host into one model.tar.gz: merge them, refusing a clash."""
    target = work_dir / "model"
    target.mkdir(parents=True, exist_ok=True)
    owners: dict[str, str] = {}
    for index, base in enumerate(bases, start=1):
        for path in sorted((base / "model").rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(base / "model").as_posix()
            if relative in owners:
                raise JobFailed(f"hosts {owners[relative]} and algo-{index} both wrote model/{relative}: only one "
                                "host (the leader) should save the model")
            owners[relative] = f"algo-{index}"
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
    for name in ("data",):
        (work_dir / "output" / name).mkdir(parents=True, exist_ok=True)
        leader_output = bases[0] / "output" / name
        if leader_output.is_dir():
            shutil.copytree(leader_output, work_dir / "output" / name, dirs_exist_ok=True)


def run(step: StepRun) -> StepResult:
    """A Training step: one training job named after the execution, step and attempt."""
    name = step.job_name()
    record = run_training_job(step.arguments, job_name=name, execution_id=step.execution_id,
                              step_name=step.step_name, work_dir=step.work_dir, log_path=step.log_path,
                              pool=step.pool, reporter=step.reporter, progress_label=step.step_name,
                              claim=step.claim)
    if record["TrainingJobStatus"] != "Completed":
        raise JobFailed(record.get("FailureReason") or "training job did not complete")
    metadata = {"TrainingJob": {"Arn": record["TrainingJobArn"]}, "Cpus": record.pop("Cpus", None),
                "PeakCpus": record.pop("PeakCpus", None),
                "CpuWaitSeconds": record.pop("CpuWaitSeconds", None),
                "ProcessSeconds": record.pop("ProcessSeconds", None),
                "FinalMetrics": {m["MetricName"]: m["Value"] for m in record["FinalMetricDataList"]}}
    return StepResult(properties=record, metadata=metadata)
