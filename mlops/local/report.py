"""The execution report: one self-contained HTML file, ``executions/<id>/report.html``.

Sections: summary and parameters; the steps; the step timeline (a Gantt chart, tuning trials as their own
rows); learning curves of every training job from the metrics its log printed; each tuning job's best trial,
trials table and objective plot; each training job's Debugger rule statuses and profiler report; CNN vs
baseline figures from the evaluation.json property file, and the figures the evaluation wrote.
This module gathers the data and draws the figures; ``templates/report.html`` lays them out.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlops import store
from mlops.definition.model import DefinitionError, parse
from mlops.local import critical_path, records
from mlops.local.figures import STATUS_COLOURS, data_uri, figure_uri, pyplot, render
from mlops.local.instrument import profiler_report_uri
from mlops.local.tuning_outputs import TRIALS_CSV, TRIALS_JSON, TUNING_JSON, TUNING_PNG
from training.atomic import atomic_write_text

MAX_IMAGE_BYTES = 2_000_000
COMPARED = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")


def _jobs_for(step: records.StepRecord) -> list[dict[str, Any]]:
    """The training jobs behind a step, also when the step was a cache hit (they belong to the source run)."""
    properties = step.properties or {}
    jobs = records.list_jobs(step.cache_source or step.execution_id, step.step_name)
    if step.step_type == "Training":
        return [j for j in jobs if j["job_name"] == properties.get("TrainingJobName")]
    if step.step_type == "Tuning":
        return [j for j in jobs if j["parent_job"] == properties.get("HyperParameterTuningJobName")]
    return []


def _cpu_label(step: records.StepRecord) -> str:
    """The cores a job step held: its grant, and what it grew to when other jobs finished."""
    metadata = step.metadata or {}
    cpus, peak = metadata.get("Cpus"), metadata.get("PeakCpus")
    if not cpus:
        return ""
    return f", {cpus}->{peak} cpu" if peak and peak != cpus else f", {cpus} cpu"


def _critical_steps(execution: records.Execution, steps: list[records.StepRecord]) -> set[str]:
    """The steps on this execution's longest path, timed by what they took."""
    try:
        definition = parse(execution.definition)
        seconds = dict.fromkeys(definition.steps, 0.0)  # a step that did not run (a branch not taken) adds nothing
        seconds.update({s.step_name: (s.end_time or time.time()) - s.start_time for s in steps if s.start_time})
        return set(critical_path.critical_path(definition, seconds))
    except (DefinitionError, ValueError, KeyError, TypeError):  # a definition that does not parse: no marks
        return set()


def timeline(execution: records.Execution, steps: list[records.StepRecord]) -> str:
    """A Gantt chart: each step's bar (grey where it waited for a core), the cores it held, the critical path."""
    plt = pyplot()
    origin = execution.creation_time
    critical = _critical_steps(execution, steps)
    rows: list[tuple[str, float, float, str, bool, float, str]] = []
    for step in steps:
        if step.start_time is None:
            continue
        end = step.end_time or time.time()
        waited = float((step.metadata or {}).get("CpuWaitSeconds") or 0.0)
        label = ("* " if step.step_name in critical else "") + step.step_name
        rows.append((label, step.start_time - origin, end - step.start_time, step.status,
                     bool(step.cache_source), waited, _cpu_label(step)))
        if step.step_type == "Tuning" and not step.cache_source:
            for index, job in enumerate(_jobs_for(step), start=1):
                if job["start_time"] is not None:
                    job_end = job["end_time"] or end
                    rows.append((f"  trial {index}", job["start_time"] - origin, job_end - job["start_time"],
                                 job["status"], False, 0.0, ""))
    figure, axis = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    for position, (_, start, width, status, cached, waited, cpus) in enumerate(reversed(rows)):
        axis.barh(position, max(width, 0.05), left=start, color=STATUS_COLOURS.get(status, "#7f8c8d"),
                  hatch="//" if cached else None, alpha=0.5 if cached else 0.9, edgecolor="black", linewidth=0.4)
        if waited >= 0.5:
            axis.barh(position, min(waited, width), left=start, color="#d5d8dc", edgecolor="black", linewidth=0.4)
        axis.text(start + max(width, 0.05), position, f" {width:.1f}s{cpus}" + (" (cache)" if cached else ""),
                  va="center", fontsize=8)
    axis.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
    axis.set_xlabel("seconds since the execution started (grey: waiting for a core; * the critical path)")
    axis.set_title("Step timeline")
    axis.grid(axis="x", alpha=0.3)
    return figure_uri(figure)


def learning_curves(step: records.StepRecord) -> str | None:
    jobs = [j for j in _jobs_for(step) if j.get("metrics")]
    if not jobs:
        return None
    plt = pyplot()
    if step.step_type == "Training":
        metrics = jobs[0]["metrics"]
        losses = {k: v for k, v in metrics.items() if "loss" in k}
        scores = {k: v for k, v in metrics.items() if "loss" not in k and k != "epoch"}
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.4))
        for axis, group, title in ((axes[0], losses, "loss"), (axes[1], scores, "score")):
            for name, values in group.items():
                axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
            axis.set_xlabel("epoch / logged round")
            axis.set_title(f"{step.step_name}: {title}")
            axis.grid(alpha=0.3)
            if group:
                axis.legend(fontsize=8)
        return figure_uri(figure)
    objective = (((step.properties or {}).get("HyperParameterTuningJobConfig") or {})
                 .get("HyperParameterTuningJobObjective") or {}).get("MetricName")
    figure, axis = plt.subplots(figsize=(7, 3.4))
    for index, job in enumerate(jobs, start=1):
        values = job["metrics"].get(objective) or []
        axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=f"trial {index}")
    axis.set_xlabel("epoch")
    axis.set_ylabel(objective or "objective")
    axis.set_title(f"{step.step_name}: objective per trial")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure_uri(figure)


def _metric_value(section: dict[str, Any], name: str) -> float | None:
    value = (section or {}).get(name)
    if isinstance(value, dict):
        value = value.get("value")
    return float(value) if isinstance(value, (int, float)) else None


def comparison(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """CNN vs baseline: a bar chart and the table rows, from an evaluation.json in the model quality format."""
    model = evaluation.get("multiclass_classification_metrics") or {}
    baseline = (evaluation.get("baseline") or {}).get("multiclass_classification_metrics") or {}
    names = [n for n in COMPARED if _metric_value(model, n) is not None]
    if not names:
        return None
    figure, axis = pyplot().subplots(figsize=(7, 3.4))
    width = 0.38
    positions = range(len(names))
    model_values = [_metric_value(model, n) or 0.0 for n in names]
    axis.bar([p - width / 2 for p in positions], model_values, width, label="CNN", color="#2c7fb8")
    if baseline:
        base_values = [_metric_value(baseline, n) or 0.0 for n in names]
        axis.bar([p + width / 2 for p in positions], base_values, width, label="XGBoost baseline", color="#f39c12")
    low = min(model_values + ([_metric_value(baseline, n) or 1.0 for n in names] if baseline else []))
    axis.set_ylim(max(0.0, low - 0.05), 1.0)
    axis.set_xticks(list(positions), names)
    axis.set_title("CNN vs XGBoost baseline (test split)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    rows = [(n, _metric_value(model, n), _metric_value(baseline, n)) for n in names]
    return {"figure": figure_uri(figure), "rows": rows}


def _processing_images(step: records.StepRecord) -> list[tuple[str, str]]:
    found = []
    outputs = ((step.properties or {}).get("ProcessingOutputConfig") or {}).get("Outputs") or []
    for output in outputs:
        try:
            folder = store.s3_uri_to_path(output["S3Output"]["S3Uri"])
        except (KeyError, ValueError):
            continue
        if folder.is_dir():
            found += [(path.name, data_uri(path.read_bytes())) for path in sorted(folder.glob("*.png"))
                      if path.stat().st_size <= MAX_IMAGE_BYTES]
    return found


def _tuning(step: records.StepRecord) -> dict[str, Any] | None:
    properties = step.properties or {}
    best = properties.get("BestTrainingJob") or {}
    if not best:
        return None
    folder = Path((step.metadata or {}).get("TuningOutputs") or "")
    links = [(name, (folder / name).resolve().as_uri()) for name in (TRIALS_CSV, TRIALS_JSON, TUNING_JSON)
             if folder.name and (folder / name).is_file()]
    plot = folder / TUNING_PNG
    return {"step": step.step_name, "job": properties.get("HyperParameterTuningJobName", ""),
            "strategy": (properties.get("HyperParameterTuningJobConfig") or {}).get("Strategy"),
            "counters": properties.get("TrainingJobStatusCounters"), "best": best,
            "objective": best.get("FinalHyperParameterTuningJobObjectiveMetric") or {},
            "trials": properties.get("TrainingJobSummaries") or [], "links": links,
            "plot": data_uri(plot.read_bytes()) if folder.name and plot.is_file() else None}


def _instrumented_jobs(step: records.StepRecord) -> list[dict[str, Any]]:
    """Each training job's Debugger rule statuses and profiler report, where it has them."""
    found = []
    for job in _jobs_for(step):
        properties = job.get("properties") or {}
        statuses = properties.get("DebugRuleEvaluationStatuses") or []
        report_uri = profiler_report_uri(properties) if properties.get("TrainingJobName") else None
        if statuses or report_uri:
            report_path = store.s3_uri_to_path(report_uri) if report_uri else None
            found.append({"step": step.step_name, "job": job["job_name"], "rules": statuses,
                          "report_uri": report_uri,
                          "report_link": report_path.resolve().as_uri() if report_path and report_path.is_file()
                          else None})
    return found


def _evaluations(steps: list[records.StepRecord]) -> list[dict[str, Any]]:
    sections = []
    for step in steps:
        if step.step_type != "Processing" or step.status != records.SUCCEEDED:
            continue
        documents = ((step.metadata or {}).get("PropertyFiles") or {}).values()
        comparisons = [comparison(d) for d in documents if isinstance(d, dict)
                       and "multiclass_classification_metrics" in d]
        images = _processing_images(step)
        if any(comparisons) or images:
            sections.append({"step": step.step_name, "comparisons": [c for c in comparisons if c],
                             "images": images})
    return sections


def render_report(execution_id: str) -> str:
    execution = records.get_execution(execution_id)
    if execution is None:
        raise LookupError(f"no local execution {execution_id!r}")
    steps = records.list_steps(execution_id)
    now = time.time()
    rows = [{"step": s, "start": _when(s.start_time),
             "seconds": ((s.end_time or now) - s.start_time) if s.start_time else 0.0} for s in steps]
    finished = [s for s in steps if s.status == records.SUCCEEDED]
    return render(
        "report.html",
        execution=execution, started=_when(execution.creation_time),
        seconds=(execution.end_time or now) - execution.creation_time, rows=rows,
        timeline=timeline(execution, steps) if steps else None,
        curves=[c for s in steps if s.step_type in ("Training", "Tuning") and (c := learning_curves(s))],
        tunings=[t for s in finished if s.step_type == "Tuning" and (t := _tuning(s))],
        instrumented=[j for s in steps if s.step_type == "Training" for j in _instrumented_jobs(s)],
        evaluations=_evaluations(steps),
        parameters=json.dumps(execution.parameters, indent=2),
    )


def _when(epoch: float | None) -> str:
    return "" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def write_report(execution_id: str) -> Path:
    path = store.executions_root() / execution_id / "report.html"
    atomic_write_text(path, render_report(execution_id))
    return path
