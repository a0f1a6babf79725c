"""Execution history in the store's SQLite database: executions, steps and jobs.

Field names follow SageMaker (DescribePipelineExecution, ListPipelineExecutionSteps, DescribeTrainingJob)
so the CLI prints the same thing for local and AWS runs. Every write is one short autocommit statement
through a fresh connection (WAL, busy timeout): several executions and their worker threads share the
database without holding connections across threads, and a runner killed at any instant leaves rows that
are whole. An execution records the PID (and process start time) of the process running it, so a runner
that died is recognised later and its execution marked Failed instead of staying Executing forever.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil

from mlops import store

EXECUTING = "Executing"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
STOPPED = "Stopped"
STARTING = "Starting"
FINISHED = (SUCCEEDED, FAILED, STOPPED)

REGION = "us-east-1"
ACCOUNT = "000000000000"

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_executions (
    execution_id TEXT PRIMARY KEY,
    pipeline_name TEXT NOT NULL,
    status TEXT NOT NULL,
    creation_time REAL NOT NULL,
    last_modified_time REAL NOT NULL,
    end_time REAL,
    failure_reason TEXT,
    parameters TEXT NOT NULL,
    definition TEXT NOT NULL,
    runner_pid INTEGER,
    runner_started REAL,
    runner_host TEXT,
    report_path TEXT
);
CREATE INDEX IF NOT EXISTS pipeline_executions_by_pipeline ON pipeline_executions(pipeline_name, creation_time);
CREATE TABLE IF NOT EXISTS pipeline_execution_steps (
    execution_id TEXT NOT NULL REFERENCES pipeline_executions(execution_id),
    step_name TEXT NOT NULL,
    step_type TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time REAL,
    end_time REAL,
    failure_reason TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    cache_key TEXT,
    cache_source TEXT,
    properties TEXT,
    metadata TEXT,
    log_path TEXT,
    work_dir TEXT,
    cpus INTEGER,
    PRIMARY KEY (execution_id, step_name)
);
CREATE INDEX IF NOT EXISTS pipeline_steps_by_cache ON pipeline_execution_steps(cache_key, status);
CREATE TABLE IF NOT EXISTS jobs (
    job_name TEXT PRIMARY KEY,
    job_type TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    step_name TEXT NOT NULL,
    parent_job TEXT,
    status TEXT NOT NULL,
    start_time REAL,
    end_time REAL,
    failure_reason TEXT,
    hyperparameters TEXT,
    metrics TEXT,
    final_metrics TEXT,
    properties TEXT,
    log_path TEXT,
    process_seconds REAL,
    cpu_wait_seconds REAL,
    creation_time REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_execution ON jobs(execution_id, step_name);
"""

_initialised: set[str] = set()


@contextmanager
def connection() -> Iterator[Any]:
    """A short-lived connection to the store database with the schema in place."""
    path = store.db_path()
    conn = store.connect(path)
    try:
        key = str(path)
        if key not in _initialised:
            conn.executescript(SCHEMA)
            _initialised.add(key)
        yield conn
    finally:
        conn.close()


def execution_arn(pipeline_name: str, execution_id: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/{pipeline_name}/execution/{execution_id}"


def job_arn(kind: str, name: str) -> str:
    resource = {"Training": "training-job", "Processing": "processing-job",
                "Tuning": "hyper-parameter-tuning-job"}[kind]
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{resource}/{name.lower()}"


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# --- runner liveness ----------------------------------------------------------------------------------------


def this_runner() -> tuple[int, float, str]:
    pid = os.getpid()
    return pid, psutil.Process(pid).create_time(), socket.gethostname()


def runner_alive(pid: int | None, started: float | None, host: str | None) -> bool:
    """Whether the process that claimed an execution still runs (same PID *and* same start time)."""
    if pid is None:
        return False
    if host and host != socket.gethostname():
        return True  # another machine's runner: we cannot tell, so do not touch it
    try:
        process = psutil.Process(pid)
        return started is None or abs(process.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


# --- executions -----------------------------------------------------------------------------------------------


@dataclass
class Execution:
    execution_id: str
    pipeline_name: str
    status: str
    creation_time: float
    last_modified_time: float
    end_time: float | None
    failure_reason: str | None
    parameters: dict[str, Any]
    definition: dict[str, Any]
    runner_pid: int | None
    runner_started: float | None
    runner_host: str | None
    report_path: str | None

    @classmethod
    def from_row(cls, row: Any) -> Execution:
        data = dict(row)
        data["parameters"] = json.loads(data["parameters"])
        data["definition"] = json.loads(data["definition"])
        return cls(**data)


def create_execution(execution_id: str, pipeline_name: str, definition: dict[str, Any],
                     parameters: dict[str, Any]) -> None:
    now = time.time()
    pid, started, host = this_runner()
    with connection() as conn:
        conn.execute(
            "INSERT INTO pipeline_executions(execution_id, pipeline_name, status, creation_time, last_modified_time,"
            " parameters, definition, runner_pid, runner_started, runner_host) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (execution_id, pipeline_name, EXECUTING, now, now, json.dumps(parameters), json.dumps(definition),
             pid, started, host),
        )


def claim_execution(execution_id: str) -> None:
    """This process now runs the execution (a detached worker, or `retry`): status Executing, our PID."""
    pid, started, host = this_runner()
    with connection() as conn:
        conn.execute(
            "UPDATE pipeline_executions SET status = ?, failure_reason = NULL, end_time = NULL,"
            " last_modified_time = ?, runner_pid = ?, runner_started = ?, runner_host = ? WHERE execution_id = ?",
            (EXECUTING, time.time(), pid, started, host, execution_id),
        )


def finish_execution(execution_id: str, status: str, failure_reason: str | None = None,
                     report_path: str | None = None) -> None:
    now = time.time()
    with connection() as conn:
        conn.execute(
            "UPDATE pipeline_executions SET status = ?, failure_reason = ?, end_time = ?, last_modified_time = ?,"
            " runner_pid = NULL, report_path = COALESCE(?, report_path) WHERE execution_id = ?",
            (status, failure_reason, now, now, report_path, execution_id),
        )


def set_report_path(execution_id: str, report_path: str) -> None:
    with connection() as conn:
        conn.execute("UPDATE pipeline_executions SET report_path = ? WHERE execution_id = ?",
                     (report_path, execution_id))


def get_execution(execution_id: str) -> Execution | None:
    with connection() as conn:
        row = conn.execute("SELECT * FROM pipeline_executions WHERE execution_id = ?", (execution_id,)).fetchone()
    return Execution.from_row(row) if row else None


def list_executions(pipeline_name: str | None = None) -> list[Execution]:
    query = "SELECT * FROM pipeline_executions"
    args: tuple[Any, ...] = ()
    if pipeline_name:
        query += " WHERE pipeline_name = ?"
        args = (pipeline_name,)
    with connection() as conn:
        rows = conn.execute(query + " ORDER BY creation_time DESC", args).fetchall()
    return [Execution.from_row(row) for row in rows]


def reconcile_dead_runners() -> list[str]:
    """Mark executions whose runner died (SIGKILL, power loss) Failed, and their running steps and jobs too.

    Returns the execution ids fixed. Safe to call from any process at any time: a live runner is untouched.
    """
    fixed = []
    with connection() as conn:
        rows = conn.execute(
            "SELECT execution_id, runner_pid, runner_started, runner_host FROM pipeline_executions WHERE status = ?",
            (EXECUTING,),
        ).fetchall()
    for row in rows:
        if runner_alive(row["runner_pid"], row["runner_started"], row["runner_host"]):
            continue
        reason = f"the local runner (PID {row['runner_pid']}) exited while the execution was running; " \
                 f"run `mlops executions retry {row['execution_id']}` to finish it"
        now = time.time()
        with connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            current = conn.execute("SELECT status, runner_pid FROM pipeline_executions WHERE execution_id = ?",
                                   (row["execution_id"],)).fetchone()
            if current["status"] != EXECUTING or current["runner_pid"] != row["runner_pid"]:
                conn.execute("ROLLBACK")  # claimed by a retry meanwhile
                continue
            conn.execute(
                "UPDATE pipeline_execution_steps SET status = ?, failure_reason = ?, end_time = ?"
                " WHERE execution_id = ? AND status IN (?, ?)",
                (FAILED, "interrupted: the local runner exited during this step", now, row["execution_id"],
                 EXECUTING, STARTING),
            )
            conn.execute(
                "UPDATE jobs SET status = ?, failure_reason = ?, end_time = ? WHERE execution_id = ? AND status = ?",
                (FAILED, "interrupted: the local runner exited during this job", now, row["execution_id"],
                 "InProgress"),
            )
            conn.execute(
                "UPDATE pipeline_executions SET status = ?, failure_reason = ?, end_time = ?, last_modified_time = ?,"
                " runner_pid = NULL WHERE execution_id = ?",
                (FAILED, reason, now, now, row["execution_id"]),
            )
            conn.execute("COMMIT")
        fixed.append(row["execution_id"])
    return fixed


# --- steps ----------------------------------------------------------------------------------------------------


@dataclass
class StepRecord:
    execution_id: str
    step_name: str
    step_type: str
    status: str
    start_time: float | None
    end_time: float | None
    failure_reason: str | None
    attempt_count: int
    cache_key: str | None
    cache_source: str | None
    properties: dict[str, Any] | None
    metadata: dict[str, Any] | None
    log_path: str | None
    work_dir: str | None
    cpus: int | None

    @classmethod
    def from_row(cls, row: Any) -> StepRecord:
        data = dict(row)
        data["properties"] = _loads(data["properties"])
        data["metadata"] = _loads(data["metadata"])
        return cls(**data)


def start_step(execution_id: str, step_name: str, step_type: str, attempt: int, *, cache_key: str | None,
               work_dir: str | None, log_path: str | None, cpus: int | None) -> None:
    now = time.time()
    with connection() as conn:
        conn.execute(
            "INSERT INTO pipeline_execution_steps(execution_id, step_name, step_type, status, start_time,"
            " attempt_count, cache_key, work_dir, log_path, cpus) VALUES (?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(execution_id, step_name) DO UPDATE SET status = excluded.status,"
            " start_time = excluded.start_time, end_time = NULL, failure_reason = NULL, cache_source = NULL,"
            " properties = NULL, metadata = NULL, attempt_count = excluded.attempt_count,"
            " cache_key = excluded.cache_key, work_dir = excluded.work_dir, log_path = excluded.log_path,"
            " cpus = excluded.cpus",
            (execution_id, step_name, step_type, EXECUTING, now, attempt, cache_key, work_dir, log_path, cpus),
        )
        conn.execute("UPDATE pipeline_executions SET last_modified_time = ? WHERE execution_id = ?",
                     (now, execution_id))


def finish_step(execution_id: str, step_name: str, status: str, *, properties: dict[str, Any] | None = None,
                metadata: dict[str, Any] | None = None, failure_reason: str | None = None,
                cache_source: str | None = None) -> None:
    now = time.time()
    with connection() as conn:
        conn.execute(
            "UPDATE pipeline_execution_steps SET status = ?, end_time = ?, properties = ?, metadata = ?,"
            " failure_reason = ?, cache_source = ? WHERE execution_id = ? AND step_name = ?",
            (status, now, _dumps(properties), _dumps(metadata), failure_reason, cache_source, execution_id,
             step_name),
        )
        conn.execute("UPDATE pipeline_executions SET last_modified_time = ? WHERE execution_id = ?",
                     (now, execution_id))


def list_steps(execution_id: str) -> list[StepRecord]:
    with connection() as conn:
        rows = conn.execute("SELECT * FROM pipeline_execution_steps WHERE execution_id = ? ORDER BY start_time",
                            (execution_id,)).fetchall()
    return [StepRecord.from_row(row) for row in rows]


def find_cached_step(pipeline_name: str, step_name: str, cache_key: str, not_before: float,
                     exclude_execution: str) -> StepRecord | None:
    """The newest successful run of this step with the same cache key in the same pipeline, if fresh enough."""
    with connection() as conn:
        rows = conn.execute(
            "SELECT s.* FROM pipeline_execution_steps s JOIN pipeline_executions e USING (execution_id)"
            " WHERE s.cache_key = ? AND s.status = ? AND s.step_name = ? AND e.pipeline_name = ?"
            " AND s.end_time >= ? AND s.execution_id != ? ORDER BY s.end_time DESC LIMIT 1",
            (cache_key, SUCCEEDED, step_name, pipeline_name, not_before, exclude_execution),
        ).fetchone()
    return StepRecord.from_row(rows) if rows else None


# --- jobs -----------------------------------------------------------------------------------------------------


def start_job(job_name: str, job_type: str, execution_id: str, step_name: str, *, parent_job: str | None = None,
              hyperparameters: dict[str, Any] | None = None, log_path: str | None = None) -> None:
    now = time.time()
    with connection() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO jobs(job_name, job_type, execution_id, step_name, parent_job, status, start_time,"
            " creation_time, hyperparameters, log_path) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (job_name, job_type, execution_id, step_name, parent_job, "InProgress", now, now,
             _dumps(hyperparameters), log_path),
        )


def job_running(job_name: str) -> float:
    """The job got its cores and its process starts now (SageMaker's TrainingStartTime)."""
    now = time.time()
    with connection() as conn:
        conn.execute("UPDATE jobs SET start_time = ? WHERE job_name = ?", (now, job_name))
    return now


def finish_job(job_name: str, status: str, *, failure_reason: str | None = None,
               metrics: dict[str, list[float]] | None = None, final_metrics: dict[str, float] | None = None,
               properties: dict[str, Any] | None = None, process_seconds: float | None = None,
               cpu_wait_seconds: float | None = None) -> None:
    with connection() as conn:
        conn.execute(
            "UPDATE jobs SET status = ?, end_time = ?, failure_reason = ?, metrics = ?, final_metrics = ?,"
            " properties = ?, process_seconds = ?, cpu_wait_seconds = ? WHERE job_name = ?",
            (status, time.time(), failure_reason, _dumps(metrics), _dumps(final_metrics), _dumps(properties),
             process_seconds, cpu_wait_seconds, job_name),
        )


def list_jobs(execution_id: str, step_name: str | None = None) -> list[dict[str, Any]]:
    query = "SELECT * FROM jobs WHERE execution_id = ?"
    args: list[Any] = [execution_id]
    if step_name:
        query += " AND step_name = ?"
        args.append(step_name)
    with connection() as conn:
        rows = conn.execute(query + " ORDER BY start_time", args).fetchall()
    jobs = []
    for row in rows:
        job = dict(row)
        for key in ("hyperparameters", "metrics", "final_metrics", "properties"):
            job[key] = _loads(job[key])
        jobs.append(job)
    return jobs


def in_progress_training_jobs() -> list[str]:
    """Names of the training jobs running now, in every execution (what ListTrainingJobs(InProgress) gives)."""
    with connection() as conn:
        rows = conn.execute("SELECT job_name FROM jobs WHERE status = 'InProgress' AND job_type = 'Training'"
                            " ORDER BY creation_time DESC").fetchall()
    return [row["job_name"] for row in rows]
