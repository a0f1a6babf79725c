"""Execution-report sections for tuning, Debugger rules and the Profiler (called by report.render).

Tuning steps: the best training job, the trials table and the objective plot, with links to trials.csv,
trials.json and tuning_job.json. Training steps: each job's DebugRuleEvaluationStatuses and a link to its
profiler report.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pipelines.local import records, store
from pipelines.local.instrument import profiler_report_uri
from pipelines.local.strategies import TRIALS_CSV, TRIALS_JSON, TUNING_JSON, TUNING_PNG

RULE_COLOURS = {"NoIssuesFound": "#3a7d44", "IssuesFound": "#c0392b", "Error": "#8e44ad", "InProgress": "#e67e22"}


def _link(path: Path, text: str) -> str:
    return f"<a href='{html.escape(path.resolve().as_uri())}'>{html.escape(text)}</a>"


def tuning_section(step: records.StepRecord) -> str:
    properties = step.properties or {}
    folder = (step.metadata or {}).get("TuningOutputs")
    best = properties.get("BestTrainingJob") or {}
    if not best:
        return ""
    objective = best.get("FinalHyperParameterTuningJobObjectiveMetric") or {}
    tuned = ", ".join(f"{k}={str(v).strip(chr(34))}" for k, v in (best.get("TunedHyperParameters") or {}).items())
    parts = [f"<h3>{html.escape(step.step_name)}: {html.escape(properties.get('HyperParameterTuningJobName', ''))}</h3>",
             (f"<p>strategy {html.escape(str((properties.get('HyperParameterTuningJobConfig') or {}).get('Strategy')))}"
              f" · best job <b>{html.escape(best.get('TrainingJobName', ''))}</b> "
              f"{html.escape(str(objective.get('MetricName')))}={objective.get('Value')} · {html.escape(tuned)} · "
              f"counters {html.escape(str(properties.get('TrainingJobStatusCounters')))}</p>")]
    rows = []
    for summary in properties.get("TrainingJobSummaries") or []:
        value = (summary.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        hps = ", ".join(f"{k}={str(v).strip(chr(34))}" for k, v in (summary.get("TunedHyperParameters") or {}).items())
        rows.append(f"<tr><td>{html.escape(summary['TrainingJobName'])}</td><td>{summary['TrainingJobStatus']}</td>"
                    f"<td>{'' if value is None else f'{value:.4f}'}</td><td>{html.escape(hps)}</td>"
                    f"<td>{html.escape(summary.get('FailureReason', '')[:120])}</td></tr>")
    parts.append("<table><tr><th>training job</th><th>status</th><th>objective</th><th>hyperparameters</th>"
                 "<th>reason</th></tr>" + "".join(rows) + "</table>")
    if folder and Path(folder).is_dir():
        folder_path = Path(folder)
        parts.append("<p>" + " · ".join(_link(folder_path / name, name) for name in (TRIALS_CSV, TRIALS_JSON, TUNING_JSON)
                                         if (folder_path / name).is_file()) + "</p>")
        if (folder_path / TUNING_PNG).is_file():
            from pipelines.local.report import _img

            parts.append(_img((folder_path / TUNING_PNG).read_bytes(), "objective by trial and hyperparameter"))
    return "".join(parts)


def training_section(step: records.StepRecord, jobs: list[dict[str, Any]]) -> str:
    parts = []
    for job in jobs:
        properties = job.get("properties") or {}
        statuses = properties.get("DebugRuleEvaluationStatuses") or []
        report_uri = profiler_report_uri(properties) if properties.get("TrainingJobName") else None
        if not statuses and not report_uri:
            continue
        parts.append(f"<h3>{html.escape(step.step_name)}: {html.escape(job['job_name'])}</h3>")
        if statuses:
            rows = "".join(
                f"<tr><td>{html.escape(s['RuleConfigurationName'])}</td><td style='color:"
                f"{RULE_COLOURS.get(s['RuleEvaluationStatus'], '#000')}'><b>{s['RuleEvaluationStatus']}</b></td>"
                f"<td>{html.escape(s.get('StatusDetails', ''))}</td></tr>" for s in statuses)
            parts.append("<table><tr><th>Debugger rule</th><th>status</th><th>details</th></tr>" + rows + "</table>")
        if report_uri:
            path = store.s3_uri_to_path(report_uri)
            parts.append("<p>" + (_link(path, "profiler report") if path.is_file() else "profiler report missing")
                         + f" ({html.escape(report_uri)})</p>")
    return "".join(parts)


def sections(steps: list[records.StepRecord], jobs_for: Any) -> str:
    """The "Tuning, Debugger and Profiler" part of the execution report ('' when there is nothing to show)."""
    parts = []
    for step in steps:
        if step.status != records.SUCCEEDED and step.step_type != "Training":
            continue
        if step.step_type == "Tuning":
            parts.append(tuning_section(step))
        elif step.step_type == "Training":
            parts.append(training_section(step, jobs_for(step)))
    body = "".join(p for p in parts if p)
    return f"<h2>Tuning, Debugger and Profiler</h2>{body}" if body else ""
