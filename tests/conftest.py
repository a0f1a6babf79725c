"""Shared fixtures: the shipped MNIST, a preprocessed stratified slice of it, and the job chain.

``job_chain`` runs the four job scripts in sequence as separate processes with the SM_* variables
and arguments SageMaker would give them: the chain proven without the pipeline or its executor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = ROOT / "data" / "mnist"

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")  # smdebug (Debugger rules) needs it


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST_DIR


def run_job(script: str, args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python training/<script>`` as its own process, as a job container would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "training" / script), *args], check=False, cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def run_job_script() -> Callable[..., subprocess.CompletedProcess]:
    return run_job


def training_env(train: Path, validation: Path, model_dir: Path, output_dir: Path) -> dict[str, str]:
    return {"SM_CHANNEL_TRAIN": str(train), "SM_CHANNEL_VALIDATION": str(validation), "SM_MODEL_DIR": str(model_dir),
            "SM_OUTPUT_DATA_DIR": str(output_dir / "data"), "SM_OUTPUT_DIR": str(output_dir), "SM_NUM_CPUS": "2"}


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
