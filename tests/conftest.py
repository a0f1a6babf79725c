"""Shared fixtures: the shipped MNIST, a preprocessed stratified slice of it, and the job chain.

``job_chain`` runs the four job scripts in sequence as separate processes with the SM_* variables
and arguments SageMaker would give them: the chain proven without the pipeline or its executor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import MNIST_DIR
from tests.helpers.jobs import run_job, training_env

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")  # smdebug (Debugger rules) needs it


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST_DIR


@pytest.fixture(scope="session")
def run_job_script() -> Callable:
    return run_job


@pytest.fixture(scope="session")
def mnist_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Preprocessed stratified slice: 3,000 training images (2,700 train / 300 validation), 1,000 test."""
    out = tmp_path_factory.mktemp("mnist-slice")
    result = run_job("preprocess.py", ["--input-dir", str(MNIST_DIR), "--output-dir", str(out),
                                       "--max-train-samples", "3000", "--max-test-samples", "1000"])
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def job_chain(mnist_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """preprocess -> train_cnn + train_xgboost -> evaluate, each a separate job process, on the slice."""
    work = tmp_path_factory.mktemp("job-chain")
    train, validation, test = (mnist_slice / s for s in ("train", "validation", "test"))
    cnn = run_job("train_cnn.py", ["--epochs", "3", "--batch-size", "32", "--lr", "0.05"],
                  training_env(train, validation, work / "cnn-model", work / "cnn-output"))
    assert cnn.returncode == 0, cnn.stderr
    xgb = run_job("train_xgboost.py", ["--num-round", "30", "--max-depth", "4"],
                  training_env(train, validation, work / "xgb-model", work / "xgb-output"))
    assert xgb.returncode == 0, xgb.stderr
    evaluation = run_job("evaluate.py", ["--cnn-model-dir", str(work / "cnn-model"),
                                         "--xgboost-model-dir", str(work / "xgb-model"),
                                         "--test-dir", str(test), "--output-dir", str(work / "evaluation"),
                                         "--bootstrap-rounds", "20"])
    assert evaluation.returncode == 0, evaluation.stderr
    return {"work": work, "cnn_log": cnn.stdout, "xgb_log": xgb.stdout, "cnn_model": work / "cnn-model",
            "xgb_model": work / "xgb-model", "cnn_output": work / "cnn-output", "evaluation": work / "evaluation"}
