"""An experiment's figures: each job's results from the store, the pandas tables, and the noise rule.

Per run (variant x seed), from the execution's records: the training job's ``history.json`` (in its
output.tar.gz: losses and validation accuracy per epoch, seconds per epoch, parameter count) and the evaluation
job's ``evaluation.json`` (test accuracy, confusion matrix). ``runs`` is one row per run, ``results`` one row
per variant: test accuracy mean and standard deviation over the seeds (sample std, ddof=1), final losses,
parameters, seconds per epoch, and the comparison with the baseline.

Whether a difference is beyond the seed-to-seed noise: Welch's t-test on the per-seed test accuracies
(two-sided, alpha 0.05; scipy), or, where scipy is missing, a difference larger than twice the pooled standard
deviation. Each finding says which rule decided it; with one seed per variant there is no noise estimate and
the finding says so.
"""

from __future__ import annotations

import json
import math
import tarfile
from dataclasses import dataclass, field
from typing import Any

from mlops import store
from mlops.experiment.plan import Plan, Variant, step_names
from mlops.local import records

ALPHA = 0.05
WELCH, TWO_SD = "welch", "2sd"
RULES = {
    WELCH: f"Welch's t-test on the per-seed test accuracies, two-sided, p < {ALPHA}",
    TWO_SD: "difference of the mean test accuracies larger than twice their pooled standard deviation",
}


class ResultsError(RuntimeError):
    """A job of a finished experiment left no readable result (the message names the job and the file)."""


@dataclass
class Run:
    variant: str
    seed: int
    training_job: str
    evaluation_job: str
    test_accuracy: float
    confusion: dict[str, dict[str, int]]
    epochs: list[dict[str, Any]]
    parameters: int | None
    config: dict[str, Any] = field(default_factory=dict)  # train_cnn.py's TrainConfig as the job ran it
    process_seconds: float | None = None

    @property
    def seconds_per_epoch(self) -> float:
        return sum(e["epoch_seconds"] for e in self.epochs) / len(self.epochs) if self.epochs else math.nan

    def last(self, key: str) -> float:
        return float(self.epochs[-1][key]) if self.epochs else math.nan


def _history(uri: str, job: str) -> dict[str, Any]:
    """history.json read from the job's output.tar.gz, without extracting anything to disk."""
    try:
        with tarfile.open(store.s3_uri_to_path(uri), "r:gz") as tar:
            member = tar.extractfile("history.json")
            if member is None:
                raise KeyError("history.json")
            return json.loads(member.read())
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError, ValueError) as exc:
        raise ResultsError(f"training job {job}: cannot read history.json from {uri}: {exc}") from exc


def _evaluation(properties: dict[str, Any], job: str) -> dict[str, Any]:
    outputs = (properties.get("ProcessingOutputConfig") or {}).get("Outputs") or []
    uris = [o["S3Output"]["S3Uri"] for o in outputs if o.get("OutputName") == "evaluation"]
    if not uris:
        raise ResultsError(f"evaluation job {job}: no output named 'evaluation'")
    uri = uris[0].rstrip("/") + "/evaluation.json"
    try:
        return json.loads(store.read_bytes(uri))
    except (OSError, ValueError) as exc:
        raise ResultsError(f"evaluation job {job}: cannot read {uri}: {exc}") from exc


def collect(plan: Plan, execution_id: str) -> list[Run]:
    """Every run's figures, in the plan's order; raises :class:`ResultsError` when one is missing."""
    steps = {s.step_name: s for s in records.list_steps(execution_id)}
    runs = []
    for seed in plan.seeds:
        for variant in plan.variants:
            train_name, evaluate_name = step_names(variant.key, seed)
            train, evaluate = steps.get(train_name), steps.get(evaluate_name)
            for name, step in ((train_name, train), (evaluate_name, evaluate)):
                if step is None or step.status != records.SUCCEEDED:
                    status = "never ran" if step is None else step.status
                    raise ResultsError(f"step {name} of execution {execution_id}: {status}")
            properties = train.properties or {}
            job = properties.get("TrainingJobName", train_name)
            history = _history(properties.get("OutputDataUri", ""), job)
            evaluation = _evaluation(evaluate.properties or {}, (evaluate.properties or {}).get("ProcessingJobName",
                                                                                                evaluate_name))
            metrics = evaluation.get("multiclass_classification_metrics") or {}
            jobs = [j for j in records.list_jobs(execution_id, train_name) if j["job_name"] == job]
            runs.append(Run(variant=variant.key, seed=seed, training_job=job,
                            evaluation_job=(evaluate.properties or {}).get("ProcessingJobName", ""),
                            test_accuracy=float(metrics["accuracy"]["value"]),
                            confusion=metrics.get("confusion_matrix") or {}, epochs=history.get("epochs") or [],
                            parameters=history.get("parameters"), config=history.get("config") or {},
                            process_seconds=jobs[0].get("process_seconds") if jobs else None))
    return runs


# --- the noise rule -------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    variant: str
    baseline: str
    difference: float  # variant mean - baseline mean (test accuracy, 0..1)
    beyond_noise: bool | None  # None: cannot tell (fewer than two seeds)
    rule: str  # WELCH or TWO_SD
    p_value: float | None = None
    threshold: float | None = None  # TWO_SD: twice the pooled std
    sentence: str = ""


def default_rule() -> str:
    try:
        import scipy.stats  # noqa: F401
    except ImportError:
        return TWO_SD
    return WELCH


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def pooled_std(a: list[float], b: list[float]) -> float:
    (_, sa), (_, sb) = _mean_std(a), _mean_std(b)
    return math.sqrt(((len(a) - 1) * sa ** 2 + (len(b) - 1) * sb ** 2) / (len(a) + len(b) - 2))


def beyond_noise(values: list[float], baseline: list[float], rule: str | None = None) -> Comparison:
    """Is the difference of the means beyond the seed-to-seed noise? (variant/baseline keys left empty)."""
    rule = rule or default_rule()
    if rule not in RULES:
        raise ValueError(f"rule {rule!r}: expected one of {', '.join(RULES)}")
    difference = _mean_std(values)[0] - _mean_std(baseline)[0]
    result = Comparison("", "", difference, None, rule)
    if len(values) < 2 or len(baseline) < 2:
        return result
    spread = pooled_std(values, baseline)
    if spread == 0.0:  # every seed gave the same accuracy: any difference is beyond the (zero) noise
        result.beyond_noise = difference != 0.0
        result.p_value = (0.0 if difference else 1.0) if rule == WELCH else None
        result.threshold = 0.0 if rule == TWO_SD else None
        return result
    if rule == WELCH:
        from scipy.stats import ttest_ind

        p_value = float(ttest_ind(values, baseline, equal_var=False).pvalue)
        if math.isnan(p_value):
            p_value = 1.0
        result.p_value, result.beyond_noise = p_value, p_value < ALPHA
    else:
        result.threshold = 2 * spread
        result.beyond_noise = abs(difference) > result.threshold
    return result


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}%"


def _spread(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def compare(plan: Plan, runs: list[Run], rule: str | None = None) -> list[Comparison]:
    """One finding per comparison of the plan (each variant against the baseline), with its sentence."""
    accuracy = {v.key: [r.test_accuracy for r in runs if r.variant == v.key] for v in plan.variants}
    found = []
    for variant, baseline in plan.comparisons():
        result = beyond_noise(accuracy[variant.key], accuracy[baseline.key], rule)
        result.variant, result.baseline = variant.key, baseline.key
        result.sentence = finding_sentence(variant, baseline, accuracy[variant.key], accuracy[baseline.key], result)
        found.append(result)
    return found


def finding_sentence(variant: Variant, baseline: Variant, values: list[float], base_values: list[float],
                     result: Comparison) -> str:
    (mean, std), (base_mean, base_std) = _mean_std(values), _mean_std(base_values)
    head = (f"{variant.label} ({variant.key}) against the baseline {baseline.label} ({baseline.key}): test accuracy "
            f"{_pct(mean)} ± {_spread(std)} vs {_pct(base_mean)} ± {_spread(base_std)} over "
            f"{len(values)} vs {len(base_values)} seeds, {100 * result.difference:+.2f} points")
    if result.beyond_noise is None:
        return f"{head}; with one seed there is no estimate of the seed-to-seed noise, so this cannot tell."
    verdict = "beyond" if result.beyond_noise else "within"
    better = "better" if result.difference > 0 else "worse" if result.difference < 0 else "no different"
    if result.rule == WELCH:
        how = f"Welch's t-test p = {result.p_value:.3g} {'<' if result.beyond_noise else '>='} {ALPHA}"
    else:
        how = f"|difference| {'>' if result.beyond_noise else '<='} 2 x pooled std = {100 * result.threshold:.2f} points"
    tail = f"{better} than the baseline" if result.beyond_noise else "not a difference the seeds can tell apart"
    return f"{head}: {verdict} the seed-to-seed noise ({how}), {tail}."


# --- tables ---------------------------------------------------------------------------------------------------


def runs_frame(plan: Plan, runs: list[Run]) -> Any:
    """One row per run (variant x seed): the per-seed spreadsheet, runs.csv."""
    import pandas as pd

    variants = {v.key: v for v in plan.variants}
    rows = []
    for run in runs:
        variant = variants[run.variant]
        rows.append({"variant": run.variant, "label": variant.label, **variant.settings, "seed": run.seed,
                     "test_accuracy": run.test_accuracy, "final_train_loss": run.last("train_loss"),
                     "final_val_loss": run.last("val_loss"), "final_val_accuracy": run.last("val_accuracy"),
                     "parameters": run.parameters, "epochs": len(run.epochs),
                     "seconds_per_epoch": run.seconds_per_epoch, "job_seconds": run.process_seconds,
                     "training_job": run.training_job, "evaluation_job": run.evaluation_job})
    return pd.DataFrame(rows)


def results_frame(plan: Plan, runs: Any, comparisons: list[Comparison]) -> Any:
    """One row per variant (results.csv): means and spreads over the seeds, and the comparison with the baseline."""
    import pandas as pd

    grouped = runs.groupby("variant", sort=False)
    table = pd.DataFrame({
        "seeds": grouped["seed"].count(),
        "test_accuracy_mean": grouped["test_accuracy"].mean(),
        "test_accuracy_std": grouped["test_accuracy"].std(ddof=1),
        "final_train_loss_mean": grouped["final_train_loss"].mean(),
        "final_val_loss_mean": grouped["final_val_loss"].mean(),
        "final_val_loss_std": grouped["final_val_loss"].std(ddof=1),
        "parameters": grouped["parameters"].first(),
        "seconds_per_epoch_mean": grouped["seconds_per_epoch"].mean(),
        "seconds_per_epoch_std": grouped["seconds_per_epoch"].std(ddof=1),
    })
    by_variant = {c.variant: c for c in comparisons}
    variants = {v.key: v for v in plan.variants}
    front = pd.DataFrame({"label": [variants[k].label for k in table.index],
                          **{f.name: [variants[k].settings[f.name] for k in table.index] for f in plan.factors}},
                         index=table.index)
    table = pd.concat([front, table], axis=1)
    table["baseline"] = [variants[k].is_baseline for k in table.index]
    table["difference_points"] = [100 * by_variant[k].difference if k in by_variant else None for k in table.index]
    table["p_value"] = [by_variant[k].p_value if k in by_variant else None for k in table.index]
    table["beyond_noise"] = [by_variant[k].beyond_noise if k in by_variant else None for k in table.index]
    table.index.name = "variant"
    return table.reset_index()
