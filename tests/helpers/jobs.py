"""Run the job scripts of training/ as their own processes, as a SageMaker job container would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def run_job(script: str, args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python training/<script> ARGS`` with the extra environment ``env``; output captured as text."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "training" / script), *args], check=False, cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def training_env(train: Path, validation: Path, model_dir: Path, output_dir: Path) -> dict[str, str]:
    """The SM_* variables of a training job with two channels."""
    return {"SM_CHANNEL_TRAIN": str(train), "SM_CHANNEL_VALIDATION": str(validation), "SM_MODEL_DIR": str(model_dir),
            "SM_OUTPUT_DATA_DIR": str(output_dir / "data"), "SM_OUTPUT_DIR": str(output_dir), "SM_NUM_CPUS": "2"}
