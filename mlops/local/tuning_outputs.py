"""A local tuning job's outputs, written next to the tuning step's log.

``trials.json`` (ListTrainingJobsForHyperParameterTuningJob's TrainingJobSummaries, best first), ``trials.csv`` (pandas),
``tuning_job.json`` (DescribeHyperParameterTuningJob with BestTrainingJob) and ``tuning.png`` (the objective
against trial number and against each hyperparameter).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from mlops.local.figures import pyplot
from training.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

TRIALS_JSON, TRIALS_CSV, TUNING_JSON, TUNING_PNG = "trials.json", "trials.csv", "tuning_job.json", "tuning.png"


def _objective(summary: dict[str, Any]) -> float | None:
    return (summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")


def _plot(summaries: list[dict[str, Any]], metric: str) -> bytes:
    plt = pyplot()
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


def trials_frame(summaries: list[dict[str, Any]], metric: str) -> Any:
    """One row per trial (best first): job, status, objective, each tuned hyperparameter, seconds, reason."""
    import pandas as pd

    names = sorted({k for s in summaries for k in (s.get("TunedHyperParameters") or {})})
    columns = ["TrainingJobName", "TrainingJobStatus", metric, *names, "seconds", "FailureReason"]
    rows = []
    for summary in summaries:
        tuned = summary.get("TunedHyperParameters") or {}
        start, end = summary.get("TrainingStartTime"), summary.get("TrainingEndTime")
        rows.append([summary["TrainingJobName"], summary["TrainingJobStatus"], _objective(summary),
                     *[str(tuned.get(n, "")).strip('"') for n in names],
                     round(end - start, 1) if start and end else None, summary.get("FailureReason", "")])
    return pd.DataFrame(rows, columns=columns)


def write_outputs(folder: Path, properties: dict[str, Any], summaries: list[dict[str, Any]], metric: str) -> Path:
    """trials.json/.csv, tuning_job.json and tuning.png in ``folder``; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / TRIALS_JSON, {"TrainingJobSummaries": summaries})
    atomic_write_json(folder / TUNING_JSON, properties)
    atomic_write_text(folder / TRIALS_CSV, trials_frame(summaries, metric).to_csv(index=False))
    if summaries:
        atomic_write_bytes(folder / TUNING_PNG, _plot(summaries, metric))
    return folder
