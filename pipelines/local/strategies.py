"""Hyperband for the local tuner, and the tuning job's outputs (trials table, plots, best job).

Hyperband: optuna's TPE sampler proposes the trials and its HyperbandPruner decides, from the objective each
trial prints per epoch (read from the trial's log as the lines appear), which trials stop early; a stopped
trial is recorded Stopped, as SageMaker's Hyperband records the jobs it stops. The resource is the epoch:
MinResource/MaxResource come from HyperbandStrategyConfig, else 1 and the static ``epochs`` hyperparameter
(SageMaker infers MaxResource from ``epochs`` the same way).

Outputs, written next to the tuning step's log: ``trials.json`` (ListTrainingJobsForHyperParameterTuningJob's
TrainingJobSummaries, best first), ``trials.csv``, ``tuning_job.json`` (DescribeHyperParameterTuningJob with
BestTrainingJob) and ``tuning.png`` (objective against trial number and against each hyperparameter).
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
from pathlib import Path
from typing import Any

from training.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

TRIALS_JSON, TRIALS_CSV, TUNING_JSON, TUNING_PNG = "trials.json", "trials.csv", "tuning_job.json", "tuning.png"


class HyperbandSearch:
    """TPE proposals + Hyperband pruning on per-epoch objective values (optuna ask/tell)."""

    def __init__(self, ranges: list[Any], maximize: bool, seed: int, max_jobs: int) -> None:
        import optuna

        from pipelines.local.tuning import BayesianSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.search = BayesianSearch(ranges, maximize, seed, max_jobs)
        self.metric: str | None = None
        self.pruned: set[int] = set()
        self.lock = threading.Lock()
        self.configure({}, {})

    def configure(self, config: dict[str, Any], static: dict[str, str], metric: str | None = None) -> None:
        """Set the resource range from HyperbandStrategyConfig (or the static epochs) and the objective."""
        hyperband = ((config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {})
        epochs = static.get("epochs")
        low = int(hyperband.get("MinResource") or 1)
        high = int(hyperband.get("MaxResource") or (json.loads(epochs) if epochs else 0) or 0)
        if high and low > high:
            from pipelines.local.jobs import JobFailed

            raise JobFailed(f"HyperbandStrategyConfig: MinResource {low} > MaxResource {high}")
        pruner = self.optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high or "auto",
                                                     reduction_factor=3)
        self.search.study.pruner = pruner
        self.metric = metric or self.metric

    def suggest(self) -> dict[str, str] | None:
        return self.search.suggest()

    def monitor(self, tuned: dict[str, str]) -> Any:
        """The per-line callback of one trial: report the newest objective value, True when Hyperband prunes."""
        trial = self.search.pending.get(json.dumps(tuned, sort_keys=True))
        if trial is None or self.metric is None:
            return None

        def should_stop(series: dict[str, list[float]]) -> bool:
            values = series.get(self.metric) or []
            if not values or not math.isfinite(values[-1]):
                return False
            with self.lock:
                trial.report(values[-1], step=len(values))
                if trial.should_prune():
                    self.pruned.add(trial.number)
                    return True
            return False

        return should_stop

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        key = json.dumps(tuned, sort_keys=True)
        trial = self.search.pending.get(key)
        if trial is not None and trial.number in self.pruned:
            self.search.pending.pop(key)
            with self.lock:
                self.search.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
            return
        self.search.observe(tuned, objective)


def _objective(summary: dict[str, Any]) -> float | None:
    return (summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")


def _plot(summaries: list[dict[str, Any]], metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_launch = sorted(summaries, key=lambda s: s.get("CreationTime") or 0)
    names = sorted({k for s in summaries for k in (s.get("TunedHyperParameters") or {})})
    figure, axes = plt.subplots(1, 1 + len(names), figsize=(3.6 * (1 + len(names)), 3.2), squeeze=False)
    colours = {"Completed": "tab:green", "Stopped": "tab:purple", "Failed": "tab:red"}

    def scatter(axis: Any, xs: list[Any], label: str) -> None:
        for x, summary in zip(xs, by_launch, strict=True):
            value = _objective(summary)
            if value is not None:
                axis.scatter([x], [value], color=colours.get(summary["TrainingJobStatus"], "grey"), s=30)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)

    scatter(axes[0][0], list(range(1, len(by_launch) + 1)), "trial (launch order)")
    values = [_objective(s) for s in by_launch]
    best, running = [], None
    for value in values:
        if value is not None:
            running = value if running is None else max(running, value)
        best.append(running)
    axes[0][0].plot(range(1, len(best) + 1), best, color="black", linewidth=1, label="best so far")
    axes[0][0].set_ylabel(metric)
    axes[0][0].legend(fontsize=7)
    for axis, name in zip(axes[0][1:], names, strict=True):
        raw = [(s.get("TunedHyperParameters") or {}).get(name) for s in by_launch]
        decoded = [_number(v) for v in raw]
        if all(isinstance(v, float) for v in decoded):
            scatter(axis, decoded, name)
            if name == "lr" or (min(decoded) > 0 and max(decoded) / min(decoded) > 20):
                axis.set_xscale("log")
        else:
            scatter(axis, [str(v).strip('"') for v in raw], name)
    figure.suptitle(f"{metric} by trial and hyperparameter (green Completed, purple Stopped)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def _number(value: Any) -> Any:
    try:
        return float(json.loads(value) if isinstance(value, str) else value)
    except (TypeError, ValueError, json.JSONDecodeError):
        return value


def write_outputs(folder: Path, properties: dict[str, Any], summaries: list[dict[str, Any]], metric: str) -> Path:
    """trials.json/.csv, tuning_job.json and tuning.png in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / TRIALS_JSON, {"TrainingJobSummaries": summaries})
    atomic_write_json(folder / TUNING_JSON, properties)
    names = sorted({k for s in summaries for k in (s.get("TunedHyperParameters") or {})})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["TrainingJobName", "TrainingJobStatus", metric, *names, "seconds", "FailureReason"])
    for summary in summaries:
        tuned = summary.get("TunedHyperParameters") or {}
        start, end = summary.get("TrainingStartTime"), summary.get("TrainingEndTime")
        writer.writerow([summary["TrainingJobName"], summary["TrainingJobStatus"], _objective(summary),
                         *[str(tuned.get(n, "")).strip('"') for n in names],
                         round(end - start, 1) if start and end else "", summary.get("FailureReason", "")])
    atomic_write_text(folder / TRIALS_CSV, buffer.getvalue())
    if summaries:
        atomic_write_bytes(folder / TUNING_PNG, _plot(summaries, metric))
    return folder
