"""``mlops experiment`` end to end: real preprocessing, training and evaluation jobs of the local executor on a
tiny slice of the shipped MNIST (300 training images, 1 epoch, 2 variants x 2 seeds), then the report.

The slice is far too small for the CNN to learn: this proves the wiring (the jobs, their records, the tables,
the report), not the figures; the README gives a real run's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from mlops.cli import main
from mlops.local import commands, records

PIPELINE = "image-classification-experiment"
SLICE = ["--samples", "300", "--test-samples", "200", "--epochs", "1", "--seeds", "2", "--parallel", "2"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("mlops")
        patch.setenv("MLOPS_HOME", str(folder))
        patch.setenv("MLOPS_CPUS", "2")
        patch.delenv("MLOPS_PIPELINE_NAME", raising=False)
        yield folder


def mlops(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def finished(home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    out = tmp_path_factory.mktemp("reports") / "kernel"
    result = mlops("experiment", "--vary", "kernel-size=3,5", *SLICE, "--out", str(out))
    assert result.exit_code == 0, result.output
    return commands.list_executions(PIPELINE)[0]["PipelineExecutionId"], out, result.output


@pytest.mark.slow
def test_every_variant_and_seed_is_a_recorded_job_and_the_report_compares_them(finished):
    execution_id, out, output = finished
    assert commands.describe_execution(execution_id)["PipelineExecutionStatus"] == "Succeeded"
    jobs = records.list_jobs(execution_id)
    training = {j["step_name"]: j for j in jobs if j["job_type"] == "Training"}
    assert set(training) == {f"Train-V{v}-seed{s}" for v in (0, 1) for s in (1, 2)}
    assert all(j["status"] == "Completed" and j["metrics"]["validation:accuracy"] for j in training.values())
    assert training["Train-V1-seed2"]["hyperparameters"]["kernel-size"] == "5"
    assert training["Train-V1-seed2"]["hyperparameters"]["seed"] == "2"
    assert {j["hyperparameters"]["epochs"] for j in training.values()} == {"1"}
    processing = sorted(j["step_name"] for j in jobs if j["job_type"] == "Processing" and j["status"] == "Completed")
    assert processing == ["Evaluate-V0-seed1", "Evaluate-V0-seed2", "Evaluate-V1-seed1", "Evaluate-V1-seed2",
                          "Preprocess"]
    steps = mlops("executions", "steps", execution_id)
    assert steps.exit_code == 0 and "Train-V1-seed2" in steps.output

    results = pd.read_csv(out / "results.csv")
    assert results["variant"].tolist() == ["V0", "V1"] and results["kernel-size"].tolist() == [3, 5]
    assert results["seeds"].tolist() == [2, 2]
    assert results["parameters"].iloc[1] > results["parameters"].iloc[0] > 0  # 5x5 kernels have more weights
    assert (results["seconds_per_epoch_mean"] > 0).all()
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["training_job"]) == {j["job_name"] for j in training.values()}
    assert runs["seed"].tolist() == [1, 1, 2, 2] and runs["variant"].tolist() == ["V0", "V1", "V0", "V1"]
    html = (out / "report.html").read_text()
    for text in ("kernel-size=5", "V0", "V1", "seed-to-seed noise", "data:image/png;base64,", "Learning curves",
                 "Confusion matrices", "Held fixed"):
        assert text in html, text
    assert "finding: kernel-size=5 (V1) against the baseline kernel-size=3 (V0)" in output
    assert "accuracy mean ± std" in output and str(out / "report.html") in output
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.slow
def test_resume_writes_the_report_of_a_finished_experiment_and_refuses_a_new_plan(finished, tmp_path: Path):
    execution_id, first, _ = finished
    spec = commands.execution_dir(execution_id) / "experiment.json"
    assert "kernel-size=3,5" in spec.read_text()
    again = tmp_path / "again"
    result = mlops("experiment", "--resume", execution_id, "--out", str(again), "--rule", "2sd")
    assert result.exit_code == 0, result.output
    assert (again / "report.html").is_file() and "2 x pooled std" in result.output
    assert pd.read_csv(again / "runs.csv")["training_job"].tolist() == pd.read_csv(first / "runs.csv")[
        "training_job"].tolist()  # the same jobs: nothing ran again
    refused = mlops("experiment", "--resume", execution_id, "--seeds", "3")
    assert refused.exit_code == 1 and "--seeds cannot change it" in refused.output
    unknown = mlops("experiment", "--resume", "nosuchexecut")
    assert unknown.exit_code == 1 and "is not a local experiment" in unknown.output


@pytest.mark.slow
def test_a_failing_experiment_writes_no_report(home, tmp_path: Path):
    data = tmp_path / "broken"
    data.mkdir()
    (data / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
    out = tmp_path / "reports" / "broken"
    result = mlops("experiment", "--vary", "kernel-size=3,5", *SLICE, "--data", str(data), "--data-format", "idx",
                   "--out", str(out))
    assert result.exit_code == 1
    assert "ended Failed" in result.output and "Step Preprocess failed" in result.output
    assert "no report was written" in result.output and "mlops experiment --resume" in result.output
    assert not out.exists() and not (tmp_path / "reports").exists()
    failed = commands.list_executions(PIPELINE)[0]
    assert failed["PipelineExecutionStatus"] == "Failed"
    assert not [j for j in records.list_jobs(failed["PipelineExecutionId"]) if j["job_type"] == "Training"]


def test_bad_factors_and_a_taken_report_folder_stop_before_anything_runs(home, tmp_path: Path):
    before = len(commands.list_executions(PIPELINE))
    result = mlops("experiment", "--vary", "kernal-size=3,5")
    assert result.exit_code == 1 and "unknown hyperparameter 'kernal-size' (did you mean kernel-size?)" in result.output
    result = mlops("experiment", "--vary", "kernel-size=3,4")
    assert result.exit_code == 1 and "kernel-size must be 3, 5 or 7, got 4" in result.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "report.html").write_text("an earlier report")
    result = mlops("experiment", "--vary", "kernel-size=3,5", "--out", str(taken))
    assert result.exit_code == 1 and "already exists and is not an empty folder" in result.output
    assert (taken / "report.html").read_text() == "an earlier report"
    assert len(commands.list_executions(PIPELINE)) == before


def test_help_explains_the_design():
    result = mlops("experiment", "--help")
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "one factor is varied at a time from a baseline" in text and "--grid runs every combination" in text

