"""Tuning steps (CreateHyperParameterTuningJob): a search over training jobs, run locally.

Every trial is a recorded training job (jobs table, its own log and model under
``{S3OutputPath}/{trial job}/output/model.tar.gz``), so ``TuningStep.get_top_model_s3_uri`` expressions
(``Std:Join`` of the output path and ``TrainingJobSummaries[k].TrainingJobName``) find the models.
MaxNumberOfTrainingJobs and MaxParallelTrainingJobs are honoured; parallel trials share the CPU budget.
The step's properties follow DescribeHyperParameterTuningJob (BestTrainingJob, TrainingJobStatusCounters,
...) plus TrainingJobSummaries sorted best first, as the pipeline service exposes them.

Search strategies and early stopping are :mod:`mlops.local.search`'s; the trials table and plots are
:mod:`mlops.local.tuning_outputs`'.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from mlops.local import records
from mlops.local.jobs import STOPPING, JobFailed
from mlops.local.runtime import Reporter, StepResult, StepRun
from mlops.local.search import STRATEGIES, MedianStopping, parse_ranges
from mlops.local.training import run_training_job
from mlops.local.tuning_outputs import write_outputs

# --- the tuning job -------------------------------------------------------------------------------------------


class _PrefixReporter:
    def __init__(self, inner: Reporter, prefix: str) -> None:
        self.inner, self.prefix = inner, prefix

    def step_status(self, step: str, status: str, detail: str = "") -> None:
        self.inner.step_status(step, status, detail)

    def step_progress(self, step: str, detail: str) -> None:
        self.inner.step_progress(step, f"{self.prefix} {detail}")


def _int_limit(limits: dict[str, Any], key: str) -> int:
    try:
        value = int(limits[key])
    except (KeyError, TypeError, ValueError) as exc:
        raise JobFailed(f"ResourceLimits.{key} must be a whole number, got {limits.get(key)!r}") from exc
    if value < 1:
        raise JobFailed(f"ResourceLimits.{key} must be >= 1, got {value}")
    return value


def tuning_job_name(execution_id: str, step_name: str, attempt: int) -> str:
    """<= 32 characters like SageMaker's tuning job names; unique per execution, step and attempt."""
    digest = hashlib.sha1(f"{execution_id}/{step_name}/{attempt}".encode()).hexdigest()[:6]
    return f"tune-{execution_id[:12]}-{digest}-a{attempt}"[:32]


def run(step: StepRun) -> StepResult:
    args = step.arguments
    config = args.get("HyperParameterTuningJobConfig") or {}
    definition = args.get("TrainingJobDefinition")
    if not isinstance(definition, dict):
        raise JobFailed("only a single TrainingJobDefinition is supported locally (TrainingJobDefinitions lists "
                        "for multi-algorithm tuning are not)")
    strategy_name = config.get("Strategy", "Bayesian")
    if strategy_name not in STRATEGIES:
        raise JobFailed(f"tuning Strategy {strategy_name!r} is not available locally (have {sorted(STRATEGIES)})")
    limits = config.get("ResourceLimits") or {}
    max_jobs = _int_limit(limits, "MaxNumberOfTrainingJobs")
    max_parallel = min(_int_limit(limits, "MaxParallelTrainingJobs"), max_jobs)
    objective = config.get("HyperParameterTuningJobObjective") or {}
    metric = objective.get("MetricName")
    maximize = objective.get("Type", "Maximize") == "Maximize"
    metric_names = {d.get("Name") for d in (definition.get("AlgorithmSpecification") or {}).get("MetricDefinitions")
                    or []}
    if metric not in metric_names:
        raise JobFailed(f"objective metric {metric!r} has no MetricDefinition (have {sorted(metric_names)})")
    ranges = parse_ranges(config.get("ParameterRanges") or {})
    name = tuning_job_name(step.execution_id, step.step_name, step.attempt)
    seed = config.get("RandomSeed")  # SageMaker's repeatable search; without one, each tuning job differs
    seed = int(seed) if seed is not None else int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
    strategy = STRATEGIES[strategy_name](ranges, maximize, seed, max_jobs)
    stopping = MedianStopping(metric, maximize) if config.get("TrainingJobEarlyStoppingType") == "Auto" else None
    static_hps = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in
                  (definition.get("StaticHyperParameters") or {}).items()}
    if hasattr(strategy, "configure"):  # Hyperband: resource range and the objective it prunes on
        strategy.configure(config, static_hps, metric)
    cpu_cap = max(1, step.pool.total // max_parallel)
    claim = step.claim or step.pool.claim(step.step_name, jobs=max_parallel)
    created = time.time()
    records.start_job(name, "Tuning", step.execution_id, step.step_name, log_path=str(step.log_path))

    static = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in
              (definition.get("StaticHyperParameters") or {}).items()}
    template = {
        "AlgorithmSpecification": definition.get("AlgorithmSpecification"),
        "InputDataConfig": definition.get("InputDataConfig"),
        "OutputDataConfig": definition.get("OutputDataConfig"),
        "ResourceConfig": definition.get("HyperParameterTuningResourceConfig") or definition.get("ResourceConfig"),
        "StoppingCondition": definition.get("StoppingCondition"),
        "RoleArn": definition.get("RoleArn"),
        "Environment": definition.get("Environment"),
    }

    def trial(index: int, tuned: dict[str, str]) -> dict[str, Any]:
        digest = hashlib.sha1(json.dumps(tuned, sort_keys=True).encode()).hexdigest()[:8]
        job = f"{name}-{index:03d}-{digest}"
        request = dict(template, HyperParameters={**static, **tuned, "_tuning_objective_metric": json.dumps(metric)})
        work = step.work_dir / job
        label = f"trial {index}/{max_jobs}"
        summary: dict[str, Any] = {"TrainingJobName": job, "TrainingJobArn": records.job_arn("Training", job),
                                   "TuningJobName": name, "TunedHyperParameters": tuned,
                                   "CreationTime": time.time()}
        try:
            record = run_training_job(
                request, job_name=job, execution_id=step.execution_id, step_name=step.step_name, work_dir=work,
                log_path=work / "job.log", pool=step.pool, reporter=_PrefixReporter(step.reporter, label),
                progress_label=step.step_name, parent_job=name, cpu_cap=cpu_cap, claim=claim,
                on_metrics=(strategy.monitor(tuned) if hasattr(strategy, "monitor") else None)
                or (stopping.should_stop if stopping else None))
        except JobFailed as exc:
            summary.update(TrainingJobStatus="Stopped" if exc.status == "Stopped" else "Failed", FailureReason=exc.reason, ObjectiveStatus="Failed",
                           TrainingEndTime=time.time())
            return summary
        final = {m["MetricName"]: m["Value"] for m in record["FinalMetricDataList"]}
        summary.update(TrainingJobStatus=record["TrainingJobStatus"], TrainingStartTime=record["TrainingStartTime"],
                       TrainingEndTime=record["TrainingEndTime"], ModelArtifacts=record["ModelArtifacts"])
        if record.get("FailureReason"):
            summary["FailureReason"] = record["FailureReason"]
        if metric in final:
            summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": "Maximize" if maximize else "Minimize", "MetricName": metric, "Value": final[metric]}
            summary["ObjectiveStatus"] = "Succeeded"
        else:
            summary["ObjectiveStatus"] = "Failed"
            summary["FailureReason"] = f"the job never printed the objective metric {metric}"
        return summary

    summaries: list[dict[str, Any]] = []
    launched = 0
    log = step.log_path
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix=f"{name}-trial") as pool, \
                open(log, "a", encoding="utf-8") as step_log:
            running: dict[Future, dict[str, str]] = {}
            exhausted = False
            while running or (launched < max_jobs and not exhausted and not STOPPING.is_set()):
                while len(running) < max_parallel and launched < max_jobs and not exhausted and not STOPPING.is_set():
                    tuned = strategy.suggest()
                    if tuned is None:
                        exhausted = True
                        break
                    launched += 1
                    step_log.write(f"trial {launched}: {json.dumps(tuned)}\n")
                    step_log.flush()
                    running[pool.submit(trial, launched, tuned)] = tuned
                # Cores are kept for the trials still to come, and nothing more once the last one is running.
                to_come = 0 if exhausted or STOPPING.is_set() else max_jobs - launched
                claim.set_jobs(min(max_parallel, len(running) + to_come))
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    tuned = running.pop(future)
                    summary = future.result()
                    value = (summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
                    strategy.observe(tuned, value)
                    if stopping and summary["TrainingJobStatus"] == "Completed":
                        series = (records.list_jobs(step.execution_id, step.step_name) or [])
                        for job in series:
                            if job["job_name"] == summary["TrainingJobName"]:
                                stopping.add((job.get("metrics") or {}).get(metric) or [])
                    summaries.append(summary)
                    step_log.write(f"{summary['TrainingJobName']}: {summary['TrainingJobStatus']} "
                                   f"{metric}={value}\n")
                    step_log.flush()
    finally:
        claim.set_jobs(0)  # the trials are over: what the tuner kept goes to the other steps
        if step.claim is None:
            claim.close()

    if STOPPING.is_set():
        records.finish_job(name, "Stopped", failure_reason="stopped with the execution")
        raise JobFailed("the tuning job was stopped with the execution", status="Stopped")
    scored = [s for s in summaries if s.get("ObjectiveStatus") == "Succeeded"]
    scored.sort(key=lambda s: s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], reverse=maximize)
    ordered = scored + [s for s in summaries if s not in scored]
    counters = {"Completed": sum(s["TrainingJobStatus"] == "Completed" for s in summaries),
                "InProgress": 0, "RetryableError": 0,
                "NonRetryableError": sum(s["TrainingJobStatus"] == "Failed" for s in summaries),
                "Stopped": sum(s["TrainingJobStatus"] == "Stopped" for s in summaries)}
    if not scored:
        reason = f"no training job of tuning job {name} produced the objective metric {metric}: " + "; ".join(
            f"{s['TrainingJobName']}: {s.get('FailureReason', s['TrainingJobStatus'])}" for s in summaries)
        records.finish_job(name, "Failed", failure_reason=reason)
        raise JobFailed(reason)
    properties = {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobArn": records.job_arn("Tuning", name),
        "HyperParameterTuningJobStatus": "Completed",
        "HyperParameterTuningJobConfig": config,
        "TrainingJobDefinition": definition,
        "CreationTime": created,
        "HyperParameterTuningEndTime": time.time(),
        "TrainingJobStatusCounters": counters,
        "ObjectiveStatusCounters": {"Succeeded": len(scored), "Pending": 0, "Failed": len(summaries) - len(scored)},
        "BestTrainingJob": scored[0],
        "TrainingJobSummaries": ordered,
    }
    records.finish_job(name, "Completed", properties=properties,
                       final_metrics={metric: scored[0]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]})
    metadata = {"TuningJob": {"Arn": properties["HyperParameterTuningJobArn"]}, "Strategy": strategy_name,
                "BestTrainingJob": scored[0]["TrainingJobName"], "Trials": len(summaries),
                "TuningOutputs": str(write_outputs(step.work_dir / "tuning-output", properties, ordered,
                                                              metric))}
    return StepResult(properties=properties, metadata=metadata)
