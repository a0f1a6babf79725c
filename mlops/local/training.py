"""Training jobs (CreateTrainingJob) run as local processes with SageMaker's script-mode contract.

The source bundle (``sagemaker_submit_directory``) is extracted into ``<job>/code`` and
``sagemaker_program`` runs there as ``python <program> --key value ...`` with the user hyperparameters
(JSON-decoded and ordered as the SageMaker training toolkit does), the ``SM_*`` environment, and each
channel downloaded to ``<job>/input/data/<channel>``. Metrics are read from the log with the job's
MetricDefinitions regexes while it runs (progress, early stopping) and again at the end (FinalMetricDataList).
The model dir becomes ``{S3OutputPath}/{job}/output/model.tar.gz``, the output data dir ``output.tar.gz``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlops import store
from mlops.local import records
from mlops.local.instrument import JobInstruments
from mlops.local.jobs import STOPPING, JobFailed, extract_tar, pack_dir, run_process
from mlops.local.runtime import CpuPool, Reporter, StepResult, StepRun, Ticket, thread_env
from training.metrics import parse_metrics

CURRENT_HOST = "algo-1"


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


def to_cmd_args(hyperparameters: dict[str, Any]) -> list[str]:
    """sagemaker_training.mapping.to_cmd_args: sorted keys, ``--key`` (``-k`` for one letter), str values."""
    args: list[str] = []
    for key in sorted(hyperparameters):
        value = hyperparameters[key]
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in sorted(value.items()))
        args += [f"--{key}" if len(key) > 1 else f"-{key}", str(value)]
    return args


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
                     parent_job: str | None = None, ticket: Ticket | None = None,
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
        program, submit = decoded.get("sagemaker_program"), decoded.get("sagemaker_submit_directory")
        if not isinstance(program, str) or not isinstance(submit, str):
            raise JobFailed("HyperParameters must name sagemaker_program and sagemaker_submit_directory (script "
                            f"mode); got {sorted(decoded)}")
        code_dir, input_dir = work_dir / "code", work_dir / "input"
        model_dir, output_dir = work_dir / "model", work_dir / "output"
        output_data_dir = output_dir / "data"
        for folder in (code_dir, input_dir / "config", model_dir, output_data_dir):
            folder.mkdir(parents=True, exist_ok=True)
        _fetch_code(submit, code_dir, work_dir)
        if not (code_dir / program).is_file():
            raise JobFailed(f"sagemaker_program {program!r} is not in the source bundle {submit}")
        channels = _fetch_channels(request.get("InputDataConfig") or [], input_dir / "data")
        user = user_hyperparameters(decoded)
        output_path = (request.get("OutputDataConfig") or {}).get("S3OutputPath")
        if not isinstance(output_path, str):
            raise JobFailed(f"OutputDataConfig.S3OutputPath must be an s3:// URI, got {output_path!r}")

        asked = time.perf_counter()
        cpus = pool.acquire(cap=cpu_cap, ticket=ticket)
        cpu_wait_s = time.perf_counter() - asked
        try:
            started = records.job_running(job_name)
            env = _environment(job_name, user, channels, cpus, work_dir, submit, program, request)
            if instruments is not None:
                env.update(instruments.environment())
            (input_dir / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=2))
            (input_dir / "config" / "resourceconfig.json").write_text(
                json.dumps({"current_host": CURRENT_HOST, "hosts": [CURRENT_HOST]}))
            (input_dir / "config" / "inputdataconfig.json").write_text(
                json.dumps({c["ChannelName"]: {"TrainingInputMode": "File"} for c in
                            request.get("InputDataConfig") or []}))
            epochs = user.get("epochs")
            reporter.step_progress(progress_label, f"{cpus} cpu, starting")

            def on_line(line: str) -> bool | str:
                if instruments is not None and instruments.stop_reason:
                    return instruments.stop_reason
                found = stream.feed(line)
                if not found:
                    return False
                reporter.step_progress(progress_label, _progress_text(found, line, epochs))
                return bool(on_metrics and on_metrics(stream.series))

            timeout = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
            process_s = run_process([sys.executable, program, *to_cmd_args(user)], cwd=code_dir, env=env, log_path=log_path,
                        on_line=on_line, timeout_s=timeout, failure_file=output_dir / "failure", what="training job",
                        on_start=instruments.started if instruments is not None else None)
        finally:
            try:
                if instruments is not None:
                    instrumented = instruments.finish(cpus)
            finally:
                pool.release(cpus)
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


def _fetch_code(submit: str, code_dir: Path, work_dir: Path) -> None:
    if not submit.startswith("s3://"):
        raise JobFailed(f"sagemaker_submit_directory must be an s3:// URI in the local store, got {submit!r}")
    try:
        files = store.download(submit, work_dir / "bundle")
    except (FileNotFoundError, ValueError) as exc:
        raise JobFailed(f"source bundle: {exc}") from exc
    for path in files:
        if path.name.endswith((".tar.gz", ".tgz")):
            extract_tar(path, code_dir)
        else:
            target = code_dir / path.relative_to(work_dir / "bundle")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


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


def _environment(job_name: str, user: dict[str, Any], channels: dict[str, Path], cpus: int, work_dir: Path,
                 submit: str, program: str, request: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in (request.get("Environment") or {}).items()})
    env.update(thread_env(cpus))
    model_dir, output_dir = work_dir / "model", work_dir / "output"
    training_env = {
        "job_name": job_name,
        "hyperparameters": user,
        "channel_input_dirs": {name: str(path) for name, path in channels.items()},
        "model_dir": str(model_dir),
        "output_dir": str(output_dir),
        "output_data_dir": str(output_dir / "data"),
        "input_dir": str(work_dir / "input"),
        "input_data_config": {name: {"TrainingInputMode": "File"} for name in channels},
        "num_cpus": cpus,
        "num_gpus": 0,
        "hosts": [CURRENT_HOST],
        "current_host": CURRENT_HOST,
        "module_dir": submit,
        "user_entry_point": program,
        "log_level": 20,
    }
    env.update({
        "SM_MODEL_DIR": str(model_dir),
        "SM_OUTPUT_DIR": str(output_dir),
        "SM_OUTPUT_DATA_DIR": str(output_dir / "data"),
        "SM_INPUT_DIR": str(work_dir / "input"),
        "SM_INPUT_CONFIG_DIR": str(work_dir / "input" / "config"),
        "SM_CHANNELS": json.dumps(sorted(channels)),
        "SM_NUM_CPUS": str(cpus),
        "SM_NUM_GPUS": "0",
        "SM_HOSTS": json.dumps([CURRENT_HOST]),
        "SM_CURRENT_HOST": CURRENT_HOST,
        "SM_HPS": json.dumps(user),
        "SM_USER_ARGS": json.dumps(to_cmd_args(user)),
        "SM_TRAINING_ENV": json.dumps(training_env),
        "SM_MODULE_DIR": submit,
        "SM_USER_ENTRY_POINT": program,
        "SM_LOG_LEVEL": "20",
        "TRAINING_JOB_NAME": job_name,
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
    })
    for name, path in channels.items():
        env[f"SM_CHANNEL_{name.upper()}"] = str(path)
    for key, value in user.items():
        env[f"SM_HP_{re.sub(r'[^A-Za-z0-9]', '_', key).upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def run(step: StepRun) -> StepResult:
    """A Training step: one training job named after the execution, step and attempt."""
    name = step.job_name()
    record = run_training_job(step.arguments, job_name=name, execution_id=step.execution_id,
                              step_name=step.step_name, work_dir=step.work_dir, log_path=step.log_path,
                              pool=step.pool, reporter=step.reporter, progress_label=step.step_name,
                              ticket=step.ticket)
    if record["TrainingJobStatus"] != "Completed":
        raise JobFailed(record.get("FailureReason") or "training job did not complete")
    metadata = {"TrainingJob": {"Arn": record["TrainingJobArn"]}, "Cpus": record.pop("Cpus", None),
                "CpuWaitSeconds": record.pop("CpuWaitSeconds", None),
                "ProcessSeconds": record.pop("ProcessSeconds", None),
                "FinalMetrics": {m["MetricName"]: m["Value"] for m in record["FinalMetricDataList"]}}
    return StepResult(properties=record, metadata=metadata)
