"""The local target of `mlops run` and `mlops executions ...`: start, resume and describe executions.

``run`` checks the parameters against the definition before anything is recorded or started, then runs
the execution in this process (``wait=True``) or in a detached worker process (``wait=False``). Answers use
SageMaker's field names (DescribePipelineExecution, ListPipelineExecutions, ListPipelineExecutionSteps).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import psutil

from mlops import store
from mlops.definition.model import DefinitionError
from mlops.local import records
from mlops.local.engine import Engine, load
from mlops.local.progress import make_reporter, summary_lines
from mlops.local.report import write_report
from training.atomic import atomic_write_json

__all__ = [
    "DefinitionError",
    "ExecutionNotFound",
    "describe_execution",
    "list_executions",
    "list_steps",
    "retry",
    "run",
]


class ExecutionNotFound(LookupError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "execution not found"


class ExecutionStateError(RuntimeError):
    """The execution is in a state that does not allow the request (e.g. retry of a running one)."""


def new_execution_id() -> str:
    """12 lower-case letters and digits, like SageMaker's pipeline execution ids."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(12))


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def execution_dir(execution_id: str) -> Path:
    """The execution's folder: definition.json, report.html, one folder per step."""
    return store.executions_root() / execution_id


def run(definition: dict[str, Any], parameters: dict[str, str], *, pipeline_name: str, wait: bool = True,
        stream: TextIO | None = None, cpus: int | None = None, execution_id: str | None = None) -> str:
    """Start an execution of ``definition``; returns its id.

    Raises :class:`DefinitionError` (a broken definition, an unknown or mistyped parameter) before anything runs.
    With ``wait`` the execution runs here with progress on ``stream`` (stdout by default); otherwise a
    detached worker runs it and this returns at once. ``execution_id`` (from :func:`new_execution_id`) lets a
    caller write beside the execution before it starts (``mlops experiment`` keeps its plan there).
    """
    parsed = load(definition)
    typed = parsed.resolve_parameters(dict(parameters))
    records.reconcile_dead_runners()
    if execution_id is not None and records.get_execution(execution_id) is not None:
        raise ExecutionStateError(f"execution {execution_id} exists already")
    execution_id = execution_id or new_execution_id()
    records.create_execution(execution_id, pipeline_name, definition, typed)
    folder = execution_dir(execution_id)
    atomic_write_json(folder / "definition.json", definition)
    if wait:
        execute(execution_id, stream=stream, cpus=cpus)
        return execution_id
    log = open(folder / "runner.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        worker = subprocess.Popen([sys.executable, "-m", "mlops.local.worker", execution_id],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env={**os.environ, "MLOPS_HOME": str(store.mlops_home())})
    finally:
        log.close()
    _hand_over(execution_id, worker.pid)
    return execution_id


def _hand_over(execution_id: str, pid: int) -> None:
    """Record the worker as the runner at once, so the execution never looks orphaned in between."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        started = None
    with records.connection() as conn:
        conn.execute("UPDATE pipeline_executions SET runner_pid = ?, runner_started = ? WHERE execution_id = ? "
                     "AND status = ?", (pid, started, execution_id, records.EXECUTING))


def execute(execution_id: str, *, stream: TextIO | None = None, cpus: int | None = None,
            resume: bool = False) -> str:
    """Run (or resume) an execution in this process; returns its final status."""
    execution = records.get_execution(execution_id)
    if execution is None:
        raise ExecutionNotFound(f"no local execution {execution_id!r} (see `mlops executions list`)")
    records.claim_execution(execution_id)
    parsed = load(execution.definition)
    reporter = make_reporter(stream)
    engine = Engine(execution_id, execution.pipeline_name, parsed, execution.parameters, reporter=reporter,
                    cpus=cpus, started=execution.creation_time)
    if resume:
        engine.resume_from(records.list_steps(execution_id))
    started = time.time()
    reporter.start(execution_id, {name: step.type for name, step in parsed.steps.items()})
    previous = signal.getsignal(signal.SIGTERM)
    in_main = _in_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for name, state in engine.state.items():
            if state == "Succeeded":
                reporter.step_status(name, "Succeeded", "kept from the earlier run")
        status = engine.run()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the engine stopped the jobs and recorded Stopped
        status = records.STOPPED
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        if hasattr(reporter, "mark_skipped"):
            reporter.mark_skipped([n for n, s in engine.state.items() if s in ("Skipped", "Pending")])
        reporter.stop()
    report_path = _write_report(execution_id)
    summary = execution_summary(execution_id, elapsed_s=time.time() - started, report_path=report_path)
    out = stream or sys.stdout
    for line in summary_lines(summary):
        print(line, file=out, flush=True)
    return status


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _write_report(execution_id: str) -> str | None:
    """Best effort: a broken report must not turn a finished execution into an error."""
    try:
        path = write_report(execution_id)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: could not write the execution report: {exc}", file=sys.stderr)
        return None
    records.set_report_path(execution_id, str(path))
    return str(path)


def execution_summary(execution_id: str, *, elapsed_s: float, report_path: str | None) -> dict[str, Any]:
    execution = records.get_execution(execution_id)
    assert execution is not None
    steps = records.list_steps(execution_id)
    summary: dict[str, Any] = {"execution_id": execution_id, "status": execution.status, "elapsed_s": elapsed_s,
                               "failure_reason": execution.failure_reason, "report_path": report_path,
                               "cached_steps": [s.step_name for s in steps if s.cache_source]}
    for step in steps:
        if step.step_type == "RegisterModel" and step.status == records.SUCCEEDED and step.properties:
            summary["model_package_version"] = step.properties.get("ModelPackageVersion")
            summary["model_package_group"] = step.properties.get("ModelPackageGroupName")
            summary["model_approval_status"] = step.properties.get("ModelApprovalStatus")
    return summary


def retry(execution_id: str, *, stream: TextIO | None = None, cpus: int | None = None) -> str:
    """RetryPipelineExecution: rerun the failed and not-run steps of a Failed/Stopped execution, reusing the rest."""
    records.reconcile_dead_runners()
    execution = records.get_execution(execution_id)
    if execution is None:
        raise ExecutionNotFound(f"no local execution {execution_id!r} (see `mlops executions list`)")
    if execution.status == records.EXECUTING:
        raise ExecutionStateError(f"execution {execution_id} is still running (PID {execution.runner_pid}); "
                                  "only Failed or Stopped executions can be retried")
    if execution.status == records.SUCCEEDED:
        raise ExecutionStateError(f"execution {execution_id} already succeeded: nothing to retry")
    return execute(execution_id, stream=stream, cpus=cpus, resume=True)


def describe_execution(execution_id: str) -> dict[str, Any]:
    """DescribePipelineExecution, plus PipelineExecutionId and the local report path."""
    records.reconcile_dead_runners()
    execution = records.get_execution(execution_id)
    if execution is None:
        raise ExecutionNotFound(f"no local execution {execution_id!r} (see `mlops executions list`)")
    answer: dict[str, Any] = {
        "PipelineArn": f"arn:aws:sagemaker:{records.REGION}:{records.ACCOUNT}:pipeline/{execution.pipeline_name}",
        "PipelineName": execution.pipeline_name,
        "PipelineExecutionArn": records.execution_arn(execution.pipeline_name, execution_id),
        "PipelineExecutionId": execution_id,
        "PipelineExecutionDisplayName": execution_id,
        "PipelineExecutionStatus": execution.status,
        "CreationTime": _dt(execution.creation_time),
        "LastModifiedTime": _dt(execution.last_modified_time),
        "Parameters": [{"Name": k, "Value": json.dumps(v) if isinstance(v, bool) else str(v)}
                       for k, v in execution.parameters.items()],
    }
    if execution.end_time is not None:
        answer["EndTime"] = _dt(execution.end_time)
    if execution.failure_reason:
        answer["FailureReason"] = execution.failure_reason
    if execution.report_path:
        answer["ReportPath"] = execution.report_path
    return answer


def list_executions(pipeline_name: str | None = None) -> list[dict[str, Any]]:
    """ListPipelineExecutions summaries, newest first."""
    records.reconcile_dead_runners()
    summaries = []
    for execution in records.list_executions(pipeline_name):
        item = {
            "PipelineExecutionArn": records.execution_arn(execution.pipeline_name, execution.execution_id),
            "PipelineExecutionId": execution.execution_id,
            "PipelineName": execution.pipeline_name,
            "StartTime": _dt(execution.creation_time),
            "PipelineExecutionStatus": execution.status,
            "PipelineExecutionDisplayName": execution.execution_id,
        }
        if execution.failure_reason:
            item["PipelineExecutionFailureReason"] = execution.failure_reason
        summaries.append(item)
    return summaries


def list_steps(execution_id: str) -> list[dict[str, Any]]:
    """ListPipelineExecutionSteps: PipelineExecutionSteps, newest first, with local log paths."""
    records.reconcile_dead_runners()
    if records.get_execution(execution_id) is None:
        raise ExecutionNotFound(f"no local execution {execution_id!r} (see `mlops executions list`)")
    steps = []
    for step in reversed(records.list_steps(execution_id)):
        item: dict[str, Any] = {
            "StepName": step.step_name,
            "StepDisplayName": step.step_name,
            "StepType": step.step_type,
            "StartTime": _dt(step.start_time),
            "StepStatus": step.status,
            "AttemptCount": step.attempt_count,
            "Metadata": step.metadata or {},
            "LogPath": step.log_path,
        }
        if step.end_time is not None:
            item["EndTime"] = _dt(step.end_time)
        if step.failure_reason:
            item["FailureReason"] = step.failure_reason
        if step.cache_source:
            item["CacheHitResult"] = {"SourcePipelineExecutionArn": records.execution_arn(
                records.get_execution(execution_id).pipeline_name, step.cache_source)}
        steps.append(item)
    return steps
