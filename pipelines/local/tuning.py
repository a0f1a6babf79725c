"""Tuning steps (CreateHyperParameterTuningJob): a search over training jobs, run locally.

Every trial is a recorded training job (jobs table, its own log and model under
``{S3OutputPath}/{trial job}/output/model.tar.gz``), so ``TuningStep.get_top_model_s3_uri`` expressions
(``Std:Join`` of the output path and ``TrainingJobSummaries[k].TrainingJobName``) find the models.
MaxNumberOfTrainingJobs and MaxParallelTrainingJobs are honoured; parallel trials share the CPU budget.
The step's properties follow DescribeHyperParameterTuningJob (BestTrainingJob, TrainingJobStatusCounters,
...) plus TrainingJobSummaries sorted best first, as the pipeline service exposes them.

Search strategies are pluggable (:func:`register_strategy`): Random, Grid, and Bayesian (optuna's TPE
sampler). Early stopping "Auto" applies the median stopping rule SageMaker documents.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from pipelines.local import records, strategies
from pipelines.local.jobs import STOPPING, JobFailed
from pipelines.local.runtime import Reporter, StepResult, StepRun
from pipelines.local.training import run_training_job

# --- the search space ---------------------------------------------------------------------------------------


class Range:
    """One hyperparameter range as the definition states it (values are the strings SageMaker passes)."""

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        self.kind = kind
        self.name = spec["Name"]
        self.scaling = spec.get("ScalingType", "Auto")
        if kind == "Categorical":
            self.values = [str(v) for v in spec.get("Values") or []]
            if not self.values:
                raise JobFailed(f"CategoricalParameterRanges {self.name}: Values is empty")
        else:
            try:
                self.low, self.high = float(spec["MinValue"]), float(spec["MaxValue"])
            except (KeyError, TypeError, ValueError) as exc:
                raise JobFailed(f"{kind}ParameterRanges {self.name}: MinValue/MaxValue must be numbers, "
                                f"got {spec}") from exc
            if self.low > self.high:
                raise JobFailed(f"{kind}ParameterRanges {self.name}: MinValue {self.low} > MaxValue {self.high}")
            if self.scaling in ("Logarithmic", "ReverseLogarithmic") and self.low <= 0:
                raise JobFailed(f"{kind}ParameterRanges {self.name}: {self.scaling} scaling needs MinValue > 0")

    def format(self, value: float | str) -> str:
        if self.kind == "Integer":
            return str(round(float(value)))
        if self.kind == "Continuous":
            return repr(float(value))
        return str(value)

    def sample(self, rng: random.Random) -> str:
        if self.kind == "Categorical":
            return rng.choice(self.values)
        if self.scaling == "Logarithmic":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        elif self.scaling == "ReverseLogarithmic":
            value = self.high + self.low - math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.kind == "Integer":
            value = min(self.high, max(self.low, round(value)))
        return self.format(value)


def parse_ranges(parameter_ranges: dict[str, Any]) -> list[Range]:
    ranges = []
    for kind in ("Continuous", "Integer", "Categorical"):
        for spec in parameter_ranges.get(f"{kind}ParameterRanges") or []:
            ranges.append(Range(kind, spec))
    if not ranges:
        raise JobFailed("HyperParameterTuningJobConfig.ParameterRanges declares no range to search")
    return ranges


# --- strategies -----------------------------------------------------------------------------------------------


class SearchStrategy(Protocol):
    """Proposes hyperparameters and learns from results; called from one thread."""

    def suggest(self) -> dict[str, str] | None:
        """The next trial's tuned hyperparameters, or None when the space is exhausted."""

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        """A trial ended: its objective value, or None when it failed."""


class RandomSearch:
    def __init__(self, ranges: list[Range], maximize: bool, seed: int, max_jobs: int) -> None:
        self.ranges, self.rng = ranges, random.Random(seed)

    def suggest(self) -> dict[str, str]:
        return {r.name: r.sample(self.rng) for r in self.ranges}

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        pass


class GridSearch:
    """Every combination in order; SageMaker allows Grid with categorical ranges only."""

    def __init__(self, ranges: list[Range], maximize: bool, seed: int, max_jobs: int) -> None:
        bad = [r.name for r in ranges if r.kind != "Categorical"]
        if bad:
            raise JobFailed(f"Grid search needs categorical ranges only; {bad} are not categorical")
        self.names = [r.name for r in ranges]
        self.grid = itertools.product(*(r.values for r in ranges))

    def suggest(self) -> dict[str, str] | None:
        combination = next(self.grid, None)
        return None if combination is None else dict(zip(self.names, combination, strict=True))

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        pass


class BayesianSearch:
    """Bayesian optimisation with optuna's TPE sampler (ask/tell), seeded for reproducible runs."""

    def __init__(self, ranges: list[Range], maximize: bool, seed: int, max_jobs: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.ranges = ranges
        self.optuna = optuna
        startup = max(1, min(10, max_jobs // 2))
        self.study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                         sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))
        self.pending: dict[str, Any] = {}

    def suggest(self) -> dict[str, str]:
        trial = self.study.ask()
        tuned = {}
        for r in self.ranges:
            if r.kind == "Categorical":
                value: Any = trial.suggest_categorical(r.name, r.values)
            elif r.kind == "Integer":
                value = trial.suggest_int(r.name, int(r.low), int(r.high), log=r.scaling == "Logarithmic")
            else:
                value = trial.suggest_float(r.name, r.low, r.high, log=r.scaling == "Logarithmic")
            tuned[r.name] = r.format(value)
        self.pending[json.dumps(tuned, sort_keys=True)] = trial
        return tuned

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        trial = self.pending.pop(json.dumps(tuned, sort_keys=True), None)
        if trial is None:
            return
        if objective is None or not math.isfinite(objective):
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, objective)


StrategyFactory = Callable[[list[Range], bool, int, int], SearchStrategy]
STRATEGIES: dict[str, StrategyFactory] = {"Random": RandomSearch, "Grid": GridSearch, "Bayesian": BayesianSearch,
                                          "Hyperband": lambda *args: strategies.HyperbandSearch(*args)}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Plug in another strategy (e.g. Hyperband) under the name the definition's Strategy field uses."""
    STRATEGIES[name] = factory


# --- early stopping -------------------------------------------------------------------------------------------


class MedianStopping:
    """SageMaker's "Auto" early stopping: stop a trial whose objective at epoch n is worse than the median of
    the running averages of earlier trials' objective up to epoch n (needs at least 3 earlier trials)."""

    min_trials = 3

    def __init__(self, metric: str, maximize: bool) -> None:
        self.metric, self.maximize = metric, maximize
        self.finished: list[list[float]] = []
        self.lock = threading.Lock()

    def add(self, series: list[float]) -> None:
        with self.lock:
            if series:
                self.finished.append(list(series))

    def should_stop(self, series: dict[str, list[float]]) -> bool:
        values = series.get(self.metric) or []
        n = len(values)
        if n == 0:
            return False
        with self.lock:
            averages = [sum(s[:n]) / n for s in self.finished if len(s) >= n]
        if len(averages) < self.min_trials:
            return False
        median = statistics.median(averages)
        return values[-1] < median if self.maximize else values[-1] > median


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
    seed = int(config.get("RandomSeed") or int(hashlib.sha1(name.encode()).hexdigest()[:8], 16))
    strategy = STRATEGIES[strategy_name](ranges, maximize, seed, max_jobs)
    stopping = MedianStopping(metric, maximize) if config.get("TrainingJobEarlyStoppingType") == "Auto" else None
    static_hps = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in
                  (definition.get("StaticHyperParameters") or {}).items()}
    if hasattr(strategy, "configure"):  # Hyperband: resource range and the objective it prunes on
        strategy.configure(config, static_hps, metric)
    cpu_cap = max(1, step.pool.total // max_parallel)
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
                progress_label=step.step_name, parent_job=name, cpu_cap=cpu_cap,
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
                "TuningOutputs": str(strategies.write_outputs(step.work_dir / "tuning-output", properties, ordered,
                                                              metric))}
    return StepResult(properties=properties, metadata=metadata)
