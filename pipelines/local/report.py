"""The execution report: one self-contained HTML file (figures embedded as base64 PNG).

Sections: summary and parameters; the step timeline (a Gantt chart, tuning trials as their own rows);
learning curves of every training job from the metrics its log printed; CNN vs baseline figures side by
side from the evaluation.json property file; the figures the evaluation wrote (confusion matrices).
Written to ``executions/<id>/report.html``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

from pipelines.local import records, store
from training.atomic import atomic_write_text

STATUS_COLOURS = {"Succeeded": "#3a7d44", "Failed": "#c0392b", "Stopped": "#8e44ad", "Executing": "#e67e22",
                  "Completed": "#3a7d44", "InProgress": "#e67e22"}
MAX_IMAGE_BYTES = 2_000_000
COMPARED = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")


def _figure_to_img(figure: Any, alt: str) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return _img(buffer.getvalue(), alt)


def _img(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _jobs_for(step: records.StepRecord) -> list[dict[str, Any]]:
    """The training jobs behind a step, also when the step was a cache hit (they belong to the source run)."""
    properties = step.properties or {}
    source = step.cache_source or step.execution_id
    jobs = records.list_jobs(source, step.step_name)
    if step.step_type == "Training":
        return [j for j in jobs if j["job_name"] == properties.get("TrainingJobName")]
    if step.step_type == "Tuning":
        return [j for j in jobs if j["parent_job"] == properties.get("HyperParameterTuningJobName")]
    return []


def timeline(execution: records.Execution, steps: list[records.StepRecord]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    origin = execution.creation_time
    rows: list[tuple[str, float, float, str, bool]] = []
    for step in steps:
        if step.start_time is None:
            continue
        end = step.end_time or time.time()
        rows.append((step.step_name, step.start_time - origin, end - step.start_time, step.status,
                     bool(step.cache_source)))
        if step.step_type == "Tuning" and not step.cache_source:
            for index, job in enumerate(_jobs_for(step), start=1):
                if job["start_time"] is None:
                    continue
                job_end = job["end_time"] or end
                rows.append((f"  trial {index}", job["start_time"] - origin, job_end - job["start_time"],
                             job["status"], False))
    figure, axis = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.2))
    for position, (label, start, width, status, cached) in enumerate(reversed(rows)):
        axis.barh(position, max(width, 0.05), left=start, color=STATUS_COLOURS.get(status, "#7f8c8d"),
                  hatch="//" if cached else None, alpha=0.5 if cached else 0.9, edgecolor="black", linewidth=0.4)
        axis.text(start + max(width, 0.05), position, f" {width:.1f}s" + (" (cache)" if cached else ""),
                  va="center", fontsize=8)
    axis.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)])
    axis.set_xlabel("seconds since the execution started")
    axis.set_title("Step timeline")
    axis.grid(axis="x", alpha=0.3)
    return _figure_to_img(figure, "step timeline")


def learning_curves(step: records.StepRecord) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs = [j for j in _jobs_for(step) if j.get("metrics")]
    if not jobs:
        return []
    images = []
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
        images.append(_figure_to_img(figure, f"{step.step_name} learning curves"))
    else:
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
        images.append(_figure_to_img(figure, f"{step.step_name} trials"))
    return images


def _metric_value(section: dict[str, Any], name: str) -> float | None:
    value = (section or {}).get(name)
    if isinstance(value, dict):
        value = value.get("value")
    return float(value) if isinstance(value, (int, float)) else None


def comparison(evaluation: dict[str, Any]) -> str:
    """CNN vs baseline bars from an evaluation.json in SageMaker's model quality format."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = evaluation.get("multiclass_classification_metrics") or {}
    baseline = (evaluation.get("baseline") or {}).get("multiclass_classification_metrics") or {}
    names = [n for n in COMPARED if _metric_value(model, n) is not None]
    if not names:
        return ""
    figure, axis = plt.subplots(figsize=(7, 3.4))
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
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(_metric_value(model, n))}</td>"
        f"<td>{_fmt(_metric_value(baseline, n))}</td></tr>" for n in names)
    table = f"<table><tr><th>metric</th><th>CNN</th><th>XGBoost</th></tr>{rows}</table>"
    return f'<div class="side">{_figure_to_img(figure, "CNN vs XGBoost")}{table}</div>'


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _processing_images(step: records.StepRecord) -> list[tuple[str, bytes]]:
    found = []
    outputs = ((step.properties or {}).get("ProcessingOutputConfig") or {}).get("Outputs") or []
    for output in outputs:
        try:
            folder = store.s3_uri_to_path(output["S3Output"]["S3Uri"])
        except (KeyError, ValueError):
            continue
        if folder.is_dir():
            for path in sorted(folder.glob("*.png")):
                if path.stat().st_size <= MAX_IMAGE_BYTES:
                    found.append((path.name, path.read_bytes()))
    return found


def _when(epoch: float | None) -> str:
    return "" if epoch is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def render(execution_id: str) -> str:
    execution = records.get_execution(execution_id)
    if execution is None:
        raise LookupError(f"no local execution {execution_id!r}")
    steps = records.list_steps(execution_id)
    parts = [f"<h1>Pipeline execution {html.escape(execution_id)}</h1>",
             (f"<p>pipeline <b>{html.escape(execution.pipeline_name)}</b> · status "
             f"<b style='color:{STATUS_COLOURS.get(execution.status, '#000')}'>{execution.status}</b> · started "
             f"{_when(execution.creation_time)} · "
             f"{((execution.end_time or time.time()) - execution.creation_time):.1f} s</p>")]
    if execution.failure_reason:
        parts.append(f"<p class='fail'>{html.escape(execution.failure_reason)}</p>")
    rows = []
    for step in steps:
        duration = (step.end_time or time.time()) - step.start_time if step.start_time else 0.0
        cache = f"from {step.cache_source}" if step.cache_source else ""
        rows.append(f"<tr><td>{html.escape(step.step_name)}</td><td>{step.step_type}</td><td>{step.status}</td>"
                    f"<td>{_when(step.start_time)}</td><td>{duration:.1f}s</td><td>{step.attempt_count}</td>"
                    f"<td>{cache}</td><td>{html.escape(step.failure_reason or '')}</td></tr>")
    parts.append("<h2>Steps</h2><table><tr><th>step</th><th>type</th><th>status</th><th>start</th><th>time</th>"
                 "<th>attempts</th><th>cache</th><th>failure</th></tr>" + "".join(rows) + "</table>")
    if steps:
        parts.append("<h2>Timeline</h2>" + timeline(execution, steps))
    curves = [img for step in steps if step.step_type in ("Training", "Tuning") for img in learning_curves(step)]
    if curves:
        parts.append("<h2>Learning curves</h2>" + "".join(curves))
    from pipelines.local.insights import sections  # tuning trials, Debugger rule statuses, profiler reports

    parts.append(sections(steps, _jobs_for))
    for step in steps:
        if step.step_type != "Processing" or step.status != records.SUCCEEDED:
            continue
        documents = ((step.metadata or {}).get("PropertyFiles") or {}).values()
        evaluations = [d for d in documents if isinstance(d, dict) and "multiclass_classification_metrics" in d]
        images = _processing_images(step)
        if not evaluations and not images:
            continue
        parts.append(f"<h2>{html.escape(step.step_name)}</h2>")
        for evaluation in evaluations:
            parts.append(comparison(evaluation))
        if images:
            parts.append('<div class="side">' + "".join(
                f"<figure>{_img(data, name)}<figcaption>{html.escape(name)}</figcaption></figure>"
                for name, data in images) + "</div>")
    parts.append("<h2>Parameters</h2><pre>" + html.escape(json.dumps(execution.parameters, indent=2)) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:left}.side{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}"
             "img{max-width:100%}.fail{color:#c0392b;font-weight:bold}figure{margin:0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>execution {html.escape(execution_id)}"
            f"</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(execution_id: str) -> Path:
    path = store.executions_root() / execution_id / "report.html"
    atomic_write_text(path, render(execution_id))
    return path
