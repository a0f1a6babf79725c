"""Run one pipeline execution: schedule the definition's steps, evaluate expressions, cache, retry, record.

A step starts when every step it waits for has succeeded (and, inside a condition branch, when its
ConditionStep chose that branch); independent steps run at the same time in threads, their job processes
sharing the CPU budget. A failing step ends the execution as Failed with that step's reason: nothing new
starts, steps already running finish (so a retry can reuse them), nothing already written is touched.

Caching (CacheConfig): the key is the step's type, name and the attributes SageMaker's cache compares for
that step type (CACHE_KEY_ATTRIBUTES), resolved, with execution variables (PipelineExecutionId, ...) left
symbolic. A hit reuses the earlier step's properties (and so its outputs), provided those outputs still exist.

Resuming (RetryPipelineExecution): steps that succeeded keep their properties; the others run again in a
fresh attempt folder with new job names.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import shutil
import sqlite3
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mlops import store
from mlops.definition.model import Definition, DefinitionError, Step, parse
from mlops.local import control, critical_path, processing, records, training, tuning
from mlops.local.cpus import Claim, CpuPool
from mlops.local.expressions import Context, ExpressionError, canonical, resolve
from mlops.local.jobs import SERVICE_FAULT, STOPPING, THROTTLING, JobFailed, stop_all_jobs
from mlops.local.runtime import NullReporter, Reporter, StepResult, StepRun, default_cpu_budget

JOB_STEP_TYPES = ("Processing", "Training")
CPU_STEP_TYPES = (*JOB_STEP_TYPES, "Tuning")  # steps whose jobs take cores: each gets a claim when ready
CACHEABLE = ("Processing", "Training", "Tuning")
EXECUTORS = {"Processing": processing.run, "Training": training.run, "Tuning": tuning.run}
RUNNABLE_TYPES = (*EXECUTORS, "Condition", "Fail", "RegisterModel")


def load(raw: dict[str, Any]) -> Definition:
    """The definition, checked (see the model), with every step of a type this executor can run."""
    definition = parse(raw).check()
    for step in definition.steps.values():
        if step.type not in RUNNABLE_TYPES:
            raise DefinitionError(f"step {step.name}: Type {step.type!r} cannot run locally "
                                  f"(supported: {', '.join(RUNNABLE_TYPES)})")
    return definition


# What SageMaker compares to decide a cache hit ("Default cache key attributes by pipeline step type"); the
# rest (instance types and counts, output paths, stopping conditions, ProfilerConfig, ...) can change and hit.
CACHE_KEY_ATTRIBUTES = {
    "Processing": ("AppSpecification", "Environment", "ProcessingInputs"),
    "Training": ("AlgorithmSpecification", "CheckpointConfig", "DebugHookConfig", "DebugRuleConfigurations",
                 "Environment", "HyperParameters", "InputDataConfig"),
    "Tuning": ("HyperParameterTuningJobConfig", "TrainingJobDefinition", "TrainingJobDefinitions"),
}
TUNING_DEFINITION_ATTRIBUTES = ("AlgorithmSpecification", "HyperParameterRanges", "InputDataConfig",
                                "StaticHyperParameters", "TuningObjective")


def cache_key(step: Step, ctx: Context) -> str:
    """The step's name and type with the attributes SageMaker's cache compares, resolved; ``ctx`` keeps
    execution variables symbolic, so per-execution output paths do not defeat the cache."""
    attributes = {key: step.arguments[key] for key in CACHE_KEY_ATTRIBUTES[step.type] if key in step.arguments}
    if isinstance(attributes.get("TrainingJobDefinition"), dict):
        attributes["TrainingJobDefinition"] = {key: value for key, value in attributes["TrainingJobDefinition"].items()
                                               if key in TUNING_DEFINITION_ATTRIBUTES}
    payload = {"Type": step.type, "Name": step.name, "Arguments": resolve(attributes, ctx)}
    return hashlib.sha256(canonical(payload).encode()).hexdigest()


def parse_duration(text: str | None) -> timedelta | None:
    """ISO 8601 durations as CacheConfig.ExpireAfter uses them (P30D, PT1H, P1DT12H, P2W)."""
    if not text:
        return None
    match = re.fullmatch(r"P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?", text)
    if not match or not any(match.groups()):
        raise ValueError(f"CacheConfig.ExpireAfter {text!r} is not an ISO 8601 duration such as P30D or PT12H")
    weeks, days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


def retry_delay(policies: list[dict[str, Any]], exception_type: str | None, retries_done: int,
                first_start: float) -> float | None:
    """Seconds to wait before the next attempt, or None when no RetryPolicy covers this failure any more."""
    if exception_type is None:
        return None
    for policy in policies:
        if exception_type not in (policy.get("ExceptionType") or []):
            continue
        max_attempts, expire = policy.get("MaxAttempts"), policy.get("ExpireAfterMin")
        if max_attempts is not None and retries_done >= int(max_attempts):
            return None
        if expire is not None and time.time() - first_start > float(expire) * 60:
            return None
        return float(policy.get("IntervalSeconds", 1)) * float(policy.get("BackoffRate", 2.0)) ** retries_done
    return None


def classify(exc: BaseException) -> JobFailed:
    """The executor's own failures as SageMaker categories, so RetryPolicies can match them."""
    if isinstance(exc, JobFailed):
        return exc
    if isinstance(exc, ExpressionError):
        return JobFailed(f"cannot evaluate the step's arguments: {exc}")
    if isinstance(exc, sqlite3.OperationalError):
        return JobFailed(f"the store database is busy: {exc}", THROTTLING)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full volume fails the job on SageMaker too, unretried
            return JobFailed(f"the disk is full: {exc}", None)
        return JobFailed(f"local store I/O failed: {exc}", SERVICE_FAULT)
    return JobFailed(f"internal error: {type(exc).__name__}: {exc}", None)


class Engine:
    def __init__(self, execution_id: str, pipeline_name: str, definition: Definition, parameters: dict[str, Any],
                 *, reporter: Reporter | None = None, cpus: int | None = None, started: float | None = None) -> None:
        self.execution_id = execution_id
        self.pipeline_name = pipeline_name
        self.definition = definition
        self.parameters = parameters
        self.reporter = reporter or NullReporter()
        self.pool = CpuPool(cpus or default_cpu_budget())
        # Cores go first to the steps on the longest remaining path, timed by the last successful execution.
        self.priorities = critical_path.priorities(definition, critical_path.step_seconds(
            definition, critical_path.measured_seconds(pipeline_name, exclude_execution=execution_id)))
        start = datetime.fromtimestamp(started or time.time(), UTC)
        self.execution_vars = {
            "PipelineExecutionId": execution_id,
            "PipelineExecutionArn": records.execution_arn(pipeline_name, execution_id),
            "PipelineName": pipeline_name,
            "PipelineArn": f"arn:aws:sagemaker:{records.REGION}:{records.ACCOUNT}:pipeline/{pipeline_name}",
            "StartDateTime": start.isoformat(),
            "CurrentDateTime": start.isoformat(),
        }
        self.properties: dict[str, dict[str, Any]] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        self.state: dict[str, str] = {name: "Pending" for name in definition.steps}
        self.attempts: dict[str, int] = {}
        self.failures: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.work_root = store.executions_root() / execution_id

    # --- expression context ---------------------------------------------------------------------------------

    def context(self, symbolic: bool = False) -> Context:
        execution = ({k: f"{{{{Execution.{k}}}}}" for k in self.execution_vars} if symbolic
                     else dict(self.execution_vars, CurrentDateTime=datetime.now(UTC).isoformat()))
        return Context(parameters=self.parameters, execution=execution, step_properties=self._step_properties,
                       property_file=self._property_file, read_s3_json=lambda uri: json.loads(store.read_bytes(uri)))

    def _step_properties(self, name: str) -> dict[str, Any]:
        with self.lock:
            if name not in self.properties:
                raise ExpressionError(f"step {name} has no properties yet (status {self.state.get(name, 'unknown')})")
            return self.properties[name]

    def _property_file(self, step: str, name: str) -> Any:
        with self.lock:
            files = (self.metadata.get(step) or {}).get("PropertyFiles") or {}
            properties = self.properties.get(step)
        if name in files:
            return files[name]
        if properties is None:
            raise ExpressionError(f"property file {step}.{name}: step {step} has not succeeded")
        declared = self.definition.steps[step].property_files
        found = processing.read_property_files([d for d in declared if d.get("PropertyFileName") == name],
                                               properties)
        if name not in found:
            raise ExpressionError(f"step {step} declares no property file {name!r}")
        return found[name]

    # --- resuming ---------------------------------------------------------------------------------------------

    def resume_from(self, steps: list[records.StepRecord]) -> None:
        """Keep what an earlier run of this execution finished (RetryPipelineExecution)."""
        for record in steps:
            if record.step_name not in self.state:
                continue
            self.attempts[record.step_name] = record.attempt_count
            if record.status == records.SUCCEEDED:
                self.properties[record.step_name] = record.properties or {}
                self.metadata[record.step_name] = record.metadata or {}
                self.state[record.step_name] = "Succeeded"

    # --- scheduling -----------------------------------------------------------------------------------------

    def _refresh_states(self) -> None:
        """Skip steps on a branch not taken (and everything downstream of a skipped step)."""
        changed = True
        while changed:
            changed = False
            for name, step in self.definition.steps.items():
                if self.state[name] != "Pending":
                    continue
                skip = False
                if step.condition_parent and self.state[step.condition_parent] == "Succeeded":
                    outcome = self.properties[step.condition_parent].get("Outcome") == "True"
                    skip = outcome != step.condition_branch
                if any(self.state[u] == "Skipped" for u in step.upstream):
                    skip = True
                if skip:
                    self.state[name] = "Skipped"
                    changed = True

    def _ready(self) -> list[Step]:
        self._refresh_states()
        return [step for name, step in self.definition.steps.items()
                if self.state[name] == "Pending" and all(self.state[u] == "Succeeded" for u in step.upstream)]

    def run(self) -> str:
        """Run to the end; returns the execution status (Succeeded, Failed or Stopped)."""
        STOPPING.clear()
        order = self.definition.order()
        with ThreadPoolExecutor(max_workers=max(1, len(order)), thread_name_prefix="step") as threads:
            running: dict[Future, str] = {}
            try:
                while True:
                    if not self.failures:
                        ready = self._ready()
                        # Every ready step claims its place before any of them starts, so none jumps the queue.
                        claims = {s.name: self.pool.claim(s.name, self.priorities[s.name], self._parallel_jobs(s))
                                  for s in ready if s.type in CPU_STEP_TYPES}
                        for step in ready:
                            self.state[step.name] = "Executing"
                            running[threads.submit(self._execute, step, claims.get(step.name))] = step.name
                    if not running:
                        break
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        future.result()  # _execute never raises; a bug here should surface
            except BaseException:
                stop_all_jobs()
                wait(running)
                self._mark_stopped()
                raise
        return self._final_status()

    def _parallel_jobs(self, step: Step) -> int:
        """How many jobs the step runs at once: a tuning step's parallel trials, else one."""
        if step.type != "Tuning":
            return 1
        try:
            limits = resolve((step.arguments.get("HyperParameterTuningJobConfig") or {}).get("ResourceLimits") or {},
                             self.context())
            return max(1, min(int(limits["MaxParallelTrainingJobs"]), int(limits["MaxNumberOfTrainingJobs"])))
        except (ExpressionError, KeyError, TypeError, ValueError):
            return 1  # the tuning step reports the problem itself

    def _mark_stopped(self) -> None:
        for name, state in self.state.items():
            if state == "Executing":
                records.finish_step(self.execution_id, name, records.STOPPED, failure_reason="stopped by the user")
        records.finish_execution(self.execution_id, records.STOPPED, "stopped by the user")

    def _final_status(self) -> str:
        if self.failures:
            name, reason = self.failures[0]
            step = self.definition.steps[name]
            reason_text = reason if step.type == "Fail" else f"Step {name} failed: {reason}"
            records.finish_execution(self.execution_id, records.FAILED, reason_text)
            return records.FAILED
        if any(state == "Stopped" for state in self.state.values()):
            records.finish_execution(self.execution_id, records.STOPPED, "stopped")
            return records.STOPPED
        records.finish_execution(self.execution_id, records.SUCCEEDED)
        return records.SUCCEEDED

    # --- one step ---------------------------------------------------------------------------------------------

    def cache_key(self, step: Step) -> str:
        return cache_key(step, self.context(symbolic=True))

    def _execute(self, step: Step, claim: Claim | None) -> None:
        try:
            self._execute_inner(step, claim)
        except BaseException as exc:  # noqa: BLE001 - recorded as the step's failure, never lost in a thread
            failure = classify(exc)
            reason = failure.reason
            if not isinstance(exc, (JobFailed, ExpressionError, OSError, sqlite3.OperationalError)):
                reason += "\n" + "".join(traceback.format_exception(exc)[-3:])
            self._record_failure(step, reason, failure.status)
        finally:
            if claim is not None:
                claim.close()  # also when the step ended before its job asked for cores (cache hit, bad input)

    def _record_failure(self, step: Step, reason: str, status: str = records.FAILED) -> None:
        records.finish_step(self.execution_id, step.name, status, failure_reason=reason)
        with self.lock:
            self.state[step.name] = status
            if status == records.FAILED:
                self.failures.append((step.name, reason))
        self.reporter.step_status(step.name, status, reason.splitlines()[0] if reason else "")

    def _execute_inner(self, step: Step, claim: Claim | None) -> None:
        name = step.name
        cache_key = None
        if step.cache_enabled and step.type in CACHEABLE:
            try:
                cache_key = self.cache_key(step)
                if self._try_cache(step, cache_key):
                    return
            except ExpressionError:
                cache_key = None  # the real resolution below reports the problem
        retries = 0
        first_start = time.time()
        while True:
            attempt = self.attempts.get(name, 0) + 1
            self.attempts[name] = attempt
            work_dir = self.work_root / name / f"attempt-{attempt}"
            log_name = "tuning.log" if step.type == "Tuning" else "job.log" if step.type in JOB_STEP_TYPES \
                else "step.log"
            log_path = work_dir / log_name
            records.start_step(self.execution_id, name, step.type, attempt, cache_key=cache_key,
                               work_dir=str(work_dir), log_path=str(log_path), cpus=None)
            self.reporter.step_status(name, "Executing", f"attempt {attempt}" if attempt > 1 else "")
            try:
                result = self._attempt(step, work_dir, log_path, attempt, claim)
            except BaseException as exc:
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failure = classify(exc)
                delay = None if STOPPING.is_set() else retry_delay(step.retry_policies, failure.exception_type,
                                                                   retries, first_start)
                if delay is None:
                    _append_log(log_path, f"[mlops] step failed: {failure.reason}")
                    raise failure from exc
                _append_log(log_path, f"[mlops] attempt {attempt} failed ({failure.exception_type}): "
                                      f"{failure.reason}; retrying in {delay:.1f} s per the step's RetryPolicies")
                self.reporter.step_status(name, "Executing", f"retry in {delay:.0f}s: {failure.reason[:60]}")
                retries += 1
                time.sleep(delay)
                continue
            self._record_success(step, result)
            return

    def _attempt(self, step: Step, work_dir: Path, log_path: Path, attempt: int,
                 claim: Claim | None) -> StepResult:
        if work_dir.exists():
            shutil.rmtree(work_dir)  # a leftover of an interrupted attempt with the same number
        work_dir.mkdir(parents=True)
        ctx = self.context()
        run = StepRun(execution_id=self.execution_id, pipeline_name=self.pipeline_name, step_name=step.name,
                      step_type=step.type, arguments={}, raw_step=step, work_dir=work_dir, log_path=log_path,
                      attempt=attempt, pool=self.pool, reporter=self.reporter, claim=claim)
        if step.type == "Condition":
            result = control.run_condition(run, step.arguments.get("Conditions", []), ctx)
        else:
            run.arguments = resolve(step.arguments, ctx)
            if step.type == "Fail":
                result = control.run_fail(run)
            elif step.type == "RegisterModel":
                result = control.run_register(run)
            else:
                result = EXECUTORS[step.type](run)
        if step.type not in JOB_STEP_TYPES + ("Tuning",):
            log_path.write_text(json.dumps({"Properties": result.properties, "Metadata": result.metadata},
                                           indent=2, default=str) + "\n")
        return result

    def _record_success(self, step: Step, result: StepResult, cache_source: str | None = None) -> None:
        records.finish_step(self.execution_id, step.name, records.SUCCEEDED, properties=result.properties,
                            metadata=result.metadata, cache_source=cache_source)
        with self.lock:
            self.properties[step.name] = result.properties
            self.metadata[step.name] = result.metadata
            self.state[step.name] = "Succeeded"
        detail = f"cache hit from {cache_source}" if cache_source else ""
        if step.type == "Condition":
            detail = f"Outcome={result.properties.get('Outcome')}"
        elif step.type == "RegisterModel":
            detail = f"version {result.properties.get('ModelPackageVersion')}"
        elif step.type == "Tuning" and not cache_source:
            best = result.properties.get("BestTrainingJob") or {}
            objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
            detail = f"best of {len(result.properties.get('TrainingJobSummaries') or [])}: " \
                     f"{objective.get('MetricName')}={objective.get('Value')}"
        self.reporter.step_status(step.name, "Succeeded", detail)

    def _try_cache(self, step: Step, key: str) -> bool:
        expire = parse_duration(step.cache_expire_after)
        not_before = time.time() - expire.total_seconds() if expire else 0.0
        hit = records.find_cached_step(self.pipeline_name, step.name, key, not_before, self.execution_id)
        if hit is None or not _outputs_exist(step.type, hit.properties or {}):
            return False
        records.start_step(self.execution_id, step.name, step.type, 0, cache_key=key, work_dir=hit.work_dir,
                           log_path=hit.log_path, cpus=0)
        source = hit.cache_source or hit.execution_id  # the run that produced the outputs
        metadata = dict(hit.metadata or {}, CacheHit={"SourcePipelineExecutionArn":
                                                      records.execution_arn(self.pipeline_name, source)})
        self._record_success(step, StepResult(properties=hit.properties or {}, metadata=metadata),
                             cache_source=source)
        return True


def _append_log(path: Path, line: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(line.rstrip("\n") + "\n")
    except OSError:
        pass


def _outputs_exist(step_type: str, properties: dict[str, Any]) -> bool:
    """A cache hit is only a hit when what the step produced is still in the store."""
    try:
        if step_type == "Processing":
            outputs = (properties.get("ProcessingOutputConfig") or {}).get("Outputs") or []
            return all(store.exists(o["S3Output"]["S3Uri"]) for o in outputs)
        if step_type == "Training":
            return store.exists(properties["ModelArtifacts"]["S3ModelArtifacts"])
        if step_type == "Tuning":
            best = properties["BestTrainingJob"]
            return store.exists(best["ModelArtifacts"]["S3ModelArtifacts"]) if "ModelArtifacts" in best else True
    except (KeyError, TypeError, ValueError):
        return False
    return True
