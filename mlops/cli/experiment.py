"""``mlops experiment``: a controlled comparison of train_cnn.py hyperparameters, run locally, with a report.

Preprocess once, then every variant x seed as a training job and an evaluation job of the local executor (one
execution of the experiment pipeline, ``<pipeline-name>-experiment``: ``mlops executions steps|logs ID`` show
them), then report.html + results.csv + runs.csv in ``--out`` (default ``.mlops/experiments/<execution id>``).
The plan as given is kept beside the execution (``experiment.json``) before anything runs, so an experiment that
failed, was stopped or lost its process is finished with ``--resume ID``: the executor's retry reruns only what
did not succeed, then the report is written.
"""

from __future__ import annotations

import json
import math
import shlex
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from mlops import staging, store
from mlops.cli.common import config, fail
from mlops.cli.pipeline import stage_inputs
from mlops.definition.model import DefinitionError, parse
from mlops.experiment.plan import PlanError, make_plan
from mlops.experiment.report import ReportExists, check_destination, write_report
from mlops.experiment.results import (
    RULES,
    ResultsError,
    collect,
    compare,
    default_rule,
    results_frame,
    runs_frame,
)
from mlops.local import commands, records
from training.atomic import atomic_write_json

DATA_FORMATS = ["auto", "idx", "cifar10", "image-folder"]
EXPERIMENT_SUFFIX = "-experiment"
SPEC = "experiment.json"  # beside the execution: the plan as given, so --resume can finish it


def _build(pipeline_config, plan, parallel: int) -> dict[str, Any]:
    from mlops.definition.build import stabilise
    from pipelines.image_classification.experiment import get_experiment_pipeline
    from pipelines.image_classification.session import quiet_sdk

    pipeline = get_experiment_pipeline(plan.jobs(), region=pipeline_config.region, role=pipeline_config.role,
                                       default_bucket=pipeline_config.bucket,
                                       pipeline_name=pipeline_config.pipeline_name,
                                       base_job_prefix=pipeline_config.base_job_prefix, lanes=parallel)
    with quiet_sdk():
        return stabilise(json.loads(pipeline.definition()))


def _print_plan(plan) -> None:
    click.echo(f"experiment: {plan.design}, {len(plan.variants)} variants x {len(plan.seeds)} seeds "
               f"({', '.join(map(str, plan.seeds))}) = {len(plan.variants) * len(plan.seeds)} training jobs")
    for variant in plan.variants:
        settings = ", ".join(f"{k}={v}" for k, v in variant.settings.items())
        click.echo(f"  {variant.key}{' (baseline)' if variant.is_baseline else ''}: {settings}")
    if plan.fixed:
        click.echo(f"  fixed for all: {', '.join(f'{k}={v}' for k, v in plan.fixed.items())}")


def _command(ctx: click.Context) -> str:
    """The command as it ran, every option spelled out (defaults included), for the report."""
    words = ["mlops", "experiment"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        flag = max(param.opts, key=len) if isinstance(param, click.Option) else param.name
        if isinstance(value, tuple):
            words += [item for v in value for item in (flag, str(v))]
        elif isinstance(value, bool):
            words += [flag] if value else []
        elif value is not None:
            words += [flag, str(value)]
    return shlex.join(words)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _pct(value: Any) -> str:
    return "n/a" if _missing(value) else f"{100 * value:.2f}%"


def _print_results(results_table, factors: list[str], comparisons, out: Path) -> None:
    table = Table(title="test accuracy over seeds")
    for column in ("variant", *factors, "seeds", "accuracy mean ± std", "vs baseline", "beyond noise",
                   "final val loss", "params", "s/epoch"):
        table.add_column(column, justify="left" if column in ("variant", *factors) else "right")
    for row in results_table.to_dict(orient="records"):
        std = row["test_accuracy_std"]
        beyond = row["beyond_noise"]
        table.add_row(
            row["variant"] + (" (baseline)" if row["baseline"] else ""), *[str(row[f]) for f in factors],
            str(row["seeds"]), f"{_pct(row['test_accuracy_mean'])} ± " + ("n/a" if _missing(std) else f"{100 * std:.2f}"),
            "" if row["baseline"] else f"{row['difference_points']:+.2f} pts",
            "" if row["baseline"] else {True: "yes", False: "no"}.get(beyond, "cannot tell"),
            f"{row['final_val_loss_mean']:.4f}", "n/a" if _missing(row["parameters"]) else f"{int(row['parameters']):,}", f"{row['seconds_per_epoch_mean']:.2f}")
    Console(width=160).print(table)
    for comparison in comparisons:
        click.echo(f"finding: {comparison.sentence}")
    click.echo(f"report: {out / 'report.html'}")
    click.echo(f"tables: {out / 'results.csv'}, {out / 'runs.csv'}")


@click.command()
@click.option("--vary", "factors", multiple=True, metavar="NAME=L1,L2[,...]",
              help="A factor: a train_cnn.py hyperparameter and its levels (repeatable), e.g. kernel-size=3,5, "
                   "architecture=compact,dense, width=16,24, dropout=0,0.1, optimizer=sgd,adamw, lr=0.02,0.05, "
                   "batch-size=64,128. The first level of each factor is the baseline's.")
@click.option("--set", "fixed", multiple=True, metavar="NAME=VALUE",
              help="Fix a hyperparameter for every variant (repeatable); the rest keep train_cnn.py's defaults.")
@click.option("--grid", is_flag=True,
              help="Run the full product of the levels instead of varying one factor at a time.")
@click.option("--seeds", type=click.IntRange(1, 20), default=2, show_default=True,
              help="Seeds 1..N, the same for every variant: their spread is the noise a difference must beat.")
@click.option("--epochs", type=click.IntRange(1, 500), default=3, show_default=True,
              help="Epochs of every training job (the CnnEpochs parameter).")
@click.option("--samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stratified training images before the validation split (MaxTrainSamples; 0 = all).")
@click.option("--test-samples", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stratified test images (MaxTestSamples; 0 = all).")
@click.option("--data", default=None, metavar="URL",
              help="InputDataUrl: s3:// in the local store, a local path or a file:// URI [default: the shipped "
                   "MNIST].")
@click.option("--data-format", type=click.Choice(DATA_FORMATS), default="auto", show_default=True,
              help="DataFormat of --data.")
@click.option("--image-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="ImageSize: resize to this square size (0 = keep; 32 for image folders).")
@click.option("--parallel", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Jobs at a time. 1 gives each job the whole CPU budget, so seconds per epoch compare.")
@click.option("--rule", type=click.Choice(sorted(RULES)), default=None,
              help="Noise rule: welch (Welch's t-test, p < 0.05) or 2sd (difference > 2 x pooled std) "
                   "[default: welch when scipy is installed].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Report folder [default: .mlops/experiments/<execution id>]; must not exist or be empty.")
@click.option("--resume", metavar="EXECUTION_ID", default=None,
              help="Finish an experiment that failed or was stopped: rerun its failed and unrun jobs (as `mlops "
                   "executions retry` does, keeping the finished ones), then write its report. Takes no other "
                   "option but --out and --rule.")
@click.pass_context
def experiment(ctx: click.Context, factors: tuple[str, ...], fixed: tuple[str, ...], grid: bool, seeds: int,
               epochs: int, samples: int, test_samples: int, data: str | None, data_format: str, image_size: int,
               parallel: int, rule: str | None, out: Path | None, resume: str | None) -> None:
    """Compare train_cnn.py hyperparameters in a controlled experiment, locally, and write a report.

    Each --vary is a factor. With one factor the variants are its levels. With several, one factor is varied
    at a time from a baseline (the first level of every factor), so each variant differs from the baseline in
    exactly one thing: --vary kernel-size=3,5 --vary architecture=compact,dense runs (3, compact), (5, compact)
    and (3, dense). --grid runs every combination instead. Everything else is the same for every variant: the
    data split (preprocessed once), the seeds, the epochs and every other hyperparameter.

    Every variant x seed is a training job and an evaluation job of the local executor. The report (HTML,
    results.csv, runs.csv) gives per variant the test accuracy mean ± std over the seeds, final losses,
    parameters, seconds per epoch, learning curves and confusion matrices, and says for each variant whether
    its difference from the baseline is beyond the seed-to-seed noise.
    """
    if out is not None:
        out = out.resolve()
        try:
            check_destination(out)
        except ReportExists as exc:
            fail(str(exc))
    if resume is not None:
        given = [f"--{name.replace('_', '-')}" for name in ctx.params if name not in ("out", "rule", "resume")
                 and ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            fail(f"--resume finishes the experiment as it was planned; {', '.join(given)} cannot change it")
        _resume(resume, rule, out)
        return
    try:
        plan = make_plan(factors, fixed, seeds, grid)
    except PlanError as exc:
        fail(str(exc))
    base = config(ctx).for_local()
    pipeline_config = replace(base, pipeline_name=base.pipeline_name + EXPERIMENT_SUFFIX)
    overrides = {"CnnEpochs": str(epochs), "MaxTrainSamples": str(samples), "MaxTestSamples": str(test_samples),
                 "DataFormat": data_format, "ImageSize": str(image_size)}
    if data is not None:
        overrides["InputDataUrl"] = data
    try:
        built = _build(pipeline_config, plan, parallel)
        parse(built).check().resolve_parameters(overrides)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    _print_plan(plan)
    stage_inputs(pipeline_config, built, overrides, staging.stage_local, staging.stage_dataset_local,
                 staging.stage_local_path_local, staging.stage_no_weights_note_local)
    execution_id = commands.new_execution_id()
    spec = {"vary": list(factors), "set": list(fixed), "seeds": seeds, "grid": grid, "rule": rule,
            "out": str(out) if out else None, "command": _command(ctx)}
    spec_path = commands.execution_dir(execution_id) / SPEC
    atomic_write_json(spec_path, spec)  # before the run: what --resume needs if this process dies
    try:
        commands.run(built, overrides, pipeline_name=pipeline_config.pipeline_name, wait=True,
                     execution_id=execution_id)
    except DefinitionError as exc:  # nothing ran
        shutil.rmtree(spec_path.parent, ignore_errors=True)
        fail(str(exc))
    _finish(execution_id, plan, spec, rule, out)


def _resume(execution_id: str, rule: str | None, out: Path | None) -> None:
    try:
        spec = json.loads((commands.execution_dir(execution_id) / SPEC).read_text())
    except (OSError, ValueError):
        fail(f"{execution_id} is not a local experiment (no {SPEC} in {commands.execution_dir(execution_id)})")
    try:
        plan = make_plan(spec["vary"], spec["set"], spec["seeds"], spec["grid"])
    except PlanError as exc:
        fail(f"experiment {execution_id}: its plan no longer checks with train_cnn.py: {exc}")
    if out is None and spec.get("out"):
        out = Path(spec["out"])
        try:
            check_destination(out)
        except ReportExists as exc:
            fail(str(exc))
    status = commands.describe_execution(execution_id)["PipelineExecutionStatus"]
    if status in (records.FAILED, records.STOPPED):
        click.echo(f"experiment {execution_id} ended {status}: rerunning its failed and unrun jobs")
        try:
            commands.retry(execution_id)
        except commands.ExecutionStateError as exc:
            fail(str(exc))
    elif status != records.SUCCEEDED:
        fail(f"experiment {execution_id} is {status}; wait for it to end")
    _finish(execution_id, plan, spec, rule or spec.get("rule"), out)


def _finish(execution_id: str, plan, spec: dict[str, Any], rule: str | None, out: Path | None) -> None:
    """The execution's outcome; when it succeeded, the report, the table and the findings."""
    described = commands.describe_execution(execution_id)
    status = described.get("PipelineExecutionStatus")
    if status != records.SUCCEEDED:
        reason = described.get("FailureReason")
        fail(f"experiment execution {execution_id} ended {status}" + (f": {reason}" if reason else "")
             + f"; no report was written (logs: mlops executions logs {execution_id}; to finish it: "
               f"mlops experiment --resume {execution_id})")
    rule = rule or default_rule()
    out = out or store.mlops_home() / "experiments" / execution_id
    try:
        runs = collect(plan, execution_id)
        comparisons = compare(plan, runs, rule)
        execution = records.get_execution(execution_id)
        write_report(out, plan, runs, comparisons, execution_id=execution_id, rule=rule, command=spec["command"],
                     parameters=execution.parameters if execution else {},
                     execution_report=described.get("ReportPath"))
    except (ResultsError, ReportExists, OSError) as exc:
        fail(f"experiment {execution_id}: {exc}; no report was written")
    _print_results(results_frame(plan, runs_frame(plan, runs), comparisons), [f.name for f in plan.factors],
                   comparisons, out)
