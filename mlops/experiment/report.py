"""The experiment report: ``report.html`` (jinja2, the executor's templates), ``results.csv``, ``runs.csv``.

The folder is written whole or not at all: everything goes to a hidden sibling folder that is renamed into
place at the end, and removed if anything fails on the way.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from mlops.experiment.plan import Plan
from mlops.experiment.results import RULES, Comparison, Run, results_frame, runs_frame
from mlops.local.figures import data_uri, png, pyplot, render
from training.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

REPORT, RESULTS_CSV, RUNS_CSV, PLAN_JSON = "report.html", "results.csv", "runs.csv", "experiment.json"
CURVES_PNG, CONFUSION_PNG, ACCURACY_PNG = "learning_curves.png", "confusion_matrices.png", "test_accuracy.png"
SEED_COLOURS = ("#2c7fb8", "#f39c12", "#27ae60", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#d35400")


class ReportExists(FileExistsError):
    """The report folder is there already and not empty: an experiment never writes over another's report."""


def check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReportExists(f"{out} already exists and is not an empty folder; choose another --out")


def _by_variant(plan: Plan, runs: list[Run]) -> list[tuple[Any, list[Run]]]:
    return [(v, [r for r in runs if r.variant == v.key]) for v in plan.variants]


def learning_curves(plan: Plan, runs: list[Run]) -> bytes:
    """Variants side by side: losses on top, validation accuracy below, one colour per seed, shared axes."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    groups = _by_variant(plan, runs)
    figure, axes = plt.subplots(2, len(groups), figsize=(3.3 * len(groups) + 0.6, 5.6), sharey="row",
                                squeeze=False)
    for column, (variant, seeded) in enumerate(groups):
        top, bottom = axes[0][column], axes[1][column]
        for index, run in enumerate(seeded):
            colour = SEED_COLOURS[index % len(SEED_COLOURS)]
            epochs = [e["epoch"] for e in run.epochs]
            top.plot(epochs, [e["train_loss"] for e in run.epochs], color=colour, marker="o", markersize=3,
                     label=f"seed {run.seed} train")
            top.plot(epochs, [e["val_loss"] for e in run.epochs], color=colour, linestyle="--", marker="x",
                     markersize=3, label=f"seed {run.seed} validation")
            bottom.plot(epochs, [e["val_accuracy"] for e in run.epochs], color=colour, marker="o", markersize=3,
                        label=f"seed {run.seed}")
        top.set_title(f"{variant.key}: {variant.label}", fontsize=9)
        bottom.set_xlabel("epoch")
        for axis in (top, bottom):
            axis.grid(alpha=0.3)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel("cross-entropy (— train, -- validation)")
    axes[1][0].set_ylabel("validation accuracy")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    return png(figure)


def confusion_matrices(plan: Plan, runs: list[Run]) -> bytes | None:
    """Test-set confusion matrix of each variant, summed over its seeds, side by side."""
    groups = [(v, rs) for v, rs in _by_variant(plan, runs) if rs and rs[0].confusion]
    if not groups:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.8), squeeze=False)
    for axis, (variant, seeded) in zip(axes[0], groups, strict=True):
        names = list(seeded[0].confusion)
        matrix = [[sum(r.confusion.get(t, {}).get(p, 0) for r in seeded) for p in names] for t in names]
        axis.imshow(matrix, cmap="Blues")
        if len(names) <= 12:
            peak = max(max(row) for row in matrix) or 1
            for i, row in enumerate(matrix):
                for j, count in enumerate(row):
                    axis.text(j, i, str(count), ha="center", va="center", fontsize=6,
                              color="white" if count > peak / 2 else "black")
            axis.set_xticks(range(len(names)), names, fontsize=7)
            axis.set_yticks(range(len(names)), names, fontsize=7)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"{variant.key}: {variant.label}\n({len(seeded)} seeds summed)", fontsize=9)
    figure.tight_layout()
    return png(figure)


def accuracy_chart(plan: Plan, runs: list[Run]) -> bytes:
    """Mean test accuracy per variant with its standard deviation, and every seed as a dot."""
    plt = pyplot()
    groups = _by_variant(plan, runs)
    figure, axis = plt.subplots(figsize=(1.6 * len(groups) + 2.4, 3.4))
    values = []
    for position, (variant, seeded) in enumerate(groups):
        accuracies = [r.test_accuracy for r in seeded]
        values += accuracies
        mean = sum(accuracies) / len(accuracies)
        std = _std(accuracies)
        axis.bar(position, mean, 0.6, color="#bdc3c7" if variant.is_baseline else "#2c7fb8",
                 yerr=None if math.isnan(std) else std, capsize=6)
        axis.scatter([position] * len(accuracies), accuracies, color="black", s=14, zorder=3)
    low, high = min(values), max(values)
    margin = max(0.005, (high - low) * 0.6)
    axis.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    axis.set_xticks(range(len(groups)), [f"{v.key}\n{v.label}" for v, _ in groups], fontsize=8)
    axis.set_ylabel("test accuracy")
    axis.set_title("Test accuracy: mean ± std over seeds (dots: seeds)")
    axis.grid(axis="y", alpha=0.3)
    return png(figure)


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def held_fixed(runs: list[Run]) -> tuple[dict[str, Any], list[str]]:
    """From the configs the jobs really ran with: what every run shared, and what differed (factors, seed)."""
    keys = sorted({k for r in runs for k in r.config})
    fixed, varied = {}, []
    for key in keys:
        values = {json.dumps(r.config.get(key), sort_keys=True) for r in runs}
        if len(values) == 1:
            fixed[key.replace("_", "-")] = runs[0].config.get(key)
        else:
            varied.append(key.replace("_", "-"))
    return fixed, varied


def _records(frame: Any) -> list[dict[str, Any]]:
    """Rows for the template, NaN as None."""
    rows = frame.to_dict(orient="records")
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]


def write_report(out: Path, plan: Plan, runs: list[Run], comparisons: list[Comparison], *, execution_id: str,
                 rule: str, command: str, parameters: dict[str, Any], execution_report: str | None) -> Path:
    """Write the report folder ``out`` in one piece; returns it. Raises :class:`ReportExists` if it is taken."""
    check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        runs_table = runs_frame(plan, runs)
        results_table = results_frame(plan, runs_table, comparisons)
        atomic_write_text(staging / RUNS_CSV, runs_table.to_csv(index=False))
        atomic_write_text(staging / RESULTS_CSV, results_table.to_csv(index=False))
        figures = {ACCURACY_PNG: accuracy_chart(plan, runs), CURVES_PNG: learning_curves(plan, runs),
                   CONFUSION_PNG: confusion_matrices(plan, runs)}
        for name, data in figures.items():
            if data is not None:
                atomic_write_bytes(staging / name, data)
        fixed, varied = held_fixed(runs)
        atomic_write_json(staging / PLAN_JSON, {"execution_id": execution_id, "command": command,
                                                "parameters": parameters, "rule": rule, "plan": plan.describe(),
                                                "held_fixed": fixed, "varied": varied,
                                                "findings": [c.sentence for c in comparisons]})
        html = render("experiment.html", execution_id=execution_id, command=command, plan=plan,
                      created=time.strftime("%Y-%m-%d %H:%M:%S"), parameters=parameters, rule=RULES[rule],
                      results=_records(results_table), runs=_records(runs_table),
                      factors=[f.name for f in plan.factors], findings=comparisons, fixed=fixed, varied=varied,
                      figures={name: data_uri(data) for name, data in figures.items() if data is not None},
                      execution_report=Path(execution_report).resolve().as_uri() if execution_report else None)
        atomic_write_text(staging / REPORT, html)
        with contextlib.suppress(FileNotFoundError):
            out.rmdir()  # an empty folder given as --out
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
