"""``mlops experiment``'s parts without running a job: factors, variant planning, the noise rule, the report.

The end-to-end run (real jobs on a slice of MNIST) is tests/mlops/cli/test_experiment_command.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mlops.experiment.plan import GRID, ONE_AT_A_TIME, Factor, PlanError, make_plan, parse_factor, plan_variants
from mlops.experiment.report import ReportExists, write_report
from mlops.experiment.results import TWO_SD, WELCH, Run, beyond_noise, compare, pooled_std, results_frame, runs_frame

# --- factors --------------------------------------------------------------------------------------------------


def test_factor_levels_are_typed_like_the_script_and_names_take_dashes_or_underscores():
    assert parse_factor("kernel-size=3,5") == Factor("kernel-size", (3, 5))
    assert parse_factor("batch_size=64, 128") == Factor("batch-size", (64, 128))
    assert parse_factor("lr=0.02,0.05") == Factor("lr", (0.02, 0.05))
    assert parse_factor("architecture=compact,dense") == Factor("architecture", ("compact", "dense"))
    assert parse_factor("augment=true,false") == Factor("augment", (True, False))


@pytest.mark.parametrize(("text", "message"), [
    ("kernal-size=3,5", "unknown hyperparameter 'kernal-size' (did you mean kernel-size?)"),
    ("colour=red,blue", "unknown hyperparameter 'colour'"),
    ("kernel-size=3,five", "kernel-size takes a whole number, got 'five'"),
    ("lr=0.1,nan", "lr takes a finite number"),
    ("augment=true,maybe", "augment takes true or false"),
    ("kernel-size=3", "a factor needs at least two levels"),
    ("kernel-size=3,3", "level 3 given more than once"),
    ("kernel-size", "expected NAME=LEVEL1,LEVEL2"),
    ("epochs=1,2", "set it with --epochs"),
    ("seed=1,2", "set it with --seeds"),
])
def test_bad_factors_are_refused_naming_what_is_wrong(text, message):
    with pytest.raises(PlanError) as caught:
        parse_factor(text)
    assert message in str(caught.value)


def test_values_the_script_refuses_are_refused_before_anything_runs():
    with pytest.raises(PlanError, match=r"variant V1 \(kernel-size=4\): .*kernel-size must be 3, 5 or 7, got 4"):
        make_plan(["kernel-size=3,4"])
    with pytest.raises(PlanError, match="architecture must be one of"):
        make_plan(["architecture=compact,vgg"])
    with pytest.raises(PlanError, match="dropout must be in"):
        make_plan(["kernel-size=3,5"], ["dropout=1.5"])
    with pytest.raises(PlanError, match="both varied .* and fixed"):
        make_plan(["lr=0.01,0.05"], ["lr=0.02"])
    with pytest.raises(PlanError, match="given more than once"):
        make_plan(["lr=0.01,0.05", "lr=0.1,0.2"])
    with pytest.raises(PlanError, match="one value only"):
        make_plan(["lr=0.01,0.05"], ["optimizer=sgd,adam"])
    with pytest.raises(PlanError, match="at least one factor"):
        make_plan([])


# --- variants -------------------------------------------------------------------------------------------------


def test_one_factor_gives_its_levels():
    variants = plan_variants([Factor("kernel-size", (3, 5, 7))])
    assert [(v.key, v.settings, v.changed) for v in variants] == [
        ("V0", {"kernel-size": 3}, ()), ("V1", {"kernel-size": 5}, ("kernel-size",)),
        ("V2", {"kernel-size": 7}, ("kernel-size",))]


def test_several_factors_vary_one_at_a_time_from_the_baseline():
    plan = make_plan(["kernel-size=3,5", "architecture=compact,dense"], ["optimizer=adamw"], seeds=2)
    assert plan.design == ONE_AT_A_TIME
    assert [v.settings for v in plan.variants] == [
        {"kernel-size": 3, "architecture": "compact"}, {"kernel-size": 5, "architecture": "compact"},
        {"kernel-size": 3, "architecture": "dense"}]
    assert [v.label for v in plan.variants] == ["kernel-size=3, architecture=compact", "kernel-size=5",
                                                "architecture=dense"]
    assert all(len(v.changed) == 1 for v in plan.variants[1:])  # every comparison is controlled
    assert [(v.key, b.key) for v, b in plan.comparisons()] == [("V1", "V0"), ("V2", "V0")]
    jobs = plan.jobs()
    assert [j.train_step for j in jobs] == ["Train-V0-seed1", "Train-V1-seed1", "Train-V2-seed1",
                                            "Train-V0-seed2", "Train-V1-seed2", "Train-V2-seed2"]
    assert jobs[4].evaluate_step == "Evaluate-V1-seed2"
    assert jobs[4].hyperparameters == {"optimizer": "adamw", "kernel-size": 5, "architecture": "compact", "seed": 2}
    assert {j.hyperparameters["seed"] for j in jobs if j.train_step.startswith("Train-V2")} == {1, 2}


def test_grid_is_the_full_product():
    plan = make_plan(["kernel-size=3,5", "architecture=compact,keras,dense"], grid=True, seeds=1)
    assert plan.design == GRID
    assert len(plan.variants) == 6 and plan.baseline.settings == {"kernel-size": 3, "architecture": "compact"}
    assert {tuple(v.settings.values()) for v in plan.variants} == {
        (k, a) for k in (3, 5) for a in ("compact", "keras", "dense")}
    assert plan.variants[-1].changed == ("kernel-size", "architecture")


# --- the noise rule -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [WELCH, TWO_SD])
def test_a_difference_far_beyond_the_seed_spread_is_beyond_the_noise(rule):
    result = beyond_noise([0.985, 0.986, 0.984], [0.970, 0.971, 0.969], rule)
    assert result.beyond_noise is True
    assert result.difference == pytest.approx(0.015)
    if rule == WELCH:
        assert result.p_value < 0.05
    else:
        assert result.threshold == pytest.approx(2 * 0.001)


@pytest.mark.parametrize("rule", [WELCH, TWO_SD])
def test_a_difference_inside_the_seed_spread_is_within_the_noise(rule):
    result = beyond_noise([0.975, 0.985, 0.970], [0.980, 0.972, 0.979], rule)
    assert result.beyond_noise is False
    if rule == WELCH:
        assert result.p_value >= 0.05
    else:
        assert abs(result.difference) <= result.threshold


def test_one_seed_cannot_tell_and_identical_seeds_make_any_difference_count():
    assert beyond_noise([0.98], [0.97], WELCH).beyond_noise is None
    assert beyond_noise([0.98, 0.98], [0.97, 0.97], WELCH).beyond_noise is True
    assert beyond_noise([0.98, 0.98], [0.98, 0.98], TWO_SD).beyond_noise is False
    assert pooled_std([1.0, 3.0], [2.0, 4.0]) == pytest.approx(math.sqrt(2))


def _run(variant: str, seed: int, accuracy: float, parameters: int = 1000) -> Run:
    epochs = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": accuracy - 0.01 / e,
               "epoch_seconds": 2.0 + seed} for e in (1, 2)]
    confusion = {"0": {"0": 9, "1": 1}, "1": {"0": 2, "1": 8}}
    return Run(variant, seed, f"train-{variant}-{seed}", f"eval-{variant}-{seed}", accuracy, confusion, epochs,
               parameters, {"kernel_size": 3 if variant != "V1" else 5, "seed": seed, "lr": 0.05})


@pytest.fixture()
def finished():
    plan = make_plan(["kernel-size=3,5", "architecture=compact,dense"], seeds=3)
    accuracies = {"V0": (0.980, 0.981, 0.979), "V1": (0.990, 0.991, 0.989), "V2": (0.975, 0.985, 0.978)}
    runs = [_run(v, seed, accuracies[v][seed - 1], parameters=16438 if v != "V1" else 44278)
            for seed in plan.seeds for v in accuracies]
    return plan, runs


def test_findings_say_for_each_comparison_whether_it_is_beyond_the_noise(finished):
    plan, runs = finished
    found = compare(plan, runs, WELCH)
    assert [(c.variant, c.baseline, c.beyond_noise) for c in found] == [("V1", "V0", True), ("V2", "V0", False)]
    assert found[0].sentence.startswith("kernel-size=5 (V1) against the baseline kernel-size=3, architecture=compact")
    assert "beyond the seed-to-seed noise (Welch's t-test p = " in found[0].sentence
    assert "better than the baseline" in found[0].sentence and "+1.00 points" in found[0].sentence
    assert "within the seed-to-seed noise" in found[1].sentence
    two_sd = compare(plan, runs, TWO_SD)
    assert "2 x pooled std" in two_sd[0].sentence and two_sd[0].beyond_noise is True


def test_tables_hold_a_row_per_run_and_per_variant(finished):
    plan, runs = finished
    table = runs_frame(plan, runs)
    assert len(table) == 9 and {"kernel-size", "architecture", "seed", "test_accuracy"} <= set(table.columns)
    results = results_frame(plan, table, compare(plan, runs, WELCH))
    assert results["variant"].tolist() == ["V0", "V1", "V2"]
    assert results["test_accuracy_mean"].tolist() == pytest.approx([0.980, 0.990, 0.9793333])
    assert results["test_accuracy_std"].iloc[0] == pytest.approx(0.001)
    assert results["parameters"].tolist() == [16438, 44278, 16438]
    assert results["seconds_per_epoch_mean"].iloc[0] == pytest.approx(4.0)
    assert results["beyond_noise"].tolist()[1:] == [True, False] and bool(results["baseline"].iloc[0])


def test_the_report_is_written_whole(finished, tmp_path: Path):
    plan, runs = finished
    out = tmp_path / "experiments" / "abc"
    write_report(out, plan, runs, compare(plan, runs, WELCH), execution_id="abc", rule=WELCH,
                 command="mlops experiment --vary kernel-size=3,5", parameters={"CnnEpochs": 2},
                 execution_report=None)
    assert sorted(p.name for p in out.iterdir()) == ["confusion_matrices.png", "experiment.json",
                                                     "learning_curves.png", "report.html", "results.csv", "runs.csv",
                                                     "test_accuracy.png"]
    html = (out / "report.html").read_text()
    for text in ("Experiment abc", "kernel-size=5", "architecture=dense", "beyond the seed-to-seed noise",
                 "Welch&#39;s t-test", "data:image/png;base64,", "44,278", "results.csv"):
        assert text in html, text
    described = json.loads((out / "experiment.json").read_text())
    assert described["varied"] == ["kernel-size", "seed"] and described["held_fixed"] == {"lr": 0.05}
    with pytest.raises(ReportExists):
        write_report(out, plan, runs, [], execution_id="abc", rule=WELCH, command="", parameters={},
                     execution_report=None)


def test_a_report_that_fails_half_way_leaves_nothing(finished, tmp_path: Path, monkeypatch):
    from mlops.experiment import report

    plan, runs = finished

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(report, "confusion_matrices", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        report.write_report(tmp_path / "out", plan, runs, [], execution_id="abc", rule=WELCH, command="",
                            parameters={}, execution_report=None)
    assert list(tmp_path.iterdir()) == []
