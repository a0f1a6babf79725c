"""What a SageMaker training job is given, read from SM_* variables (container paths as defaults).

Nothing here hard-codes where things live beyond SageMaker's documented defaults; the local
executor sets the same variables to folders of the step.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from training.atomic import atomic_write_text
from training.datasets import DatasetError

CONTAINER_ROOT = "/opt/ml"
# The local executor's own variable (never set on SageMaker): a file holding the cores this job may use now,
# which grow when other jobs finish (mlops/local/cpus.py). Jobs read it between epochs or boosting rounds.
CPU_GRANT_FILE_ENV = "MLOPS_CPU_GRANT_FILE"
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobEnv:
    model_dir: Path
    output_data_dir: Path
    output_dir: Path
    input_data_dir: Path
    num_cpus: int

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> JobEnv:
        env = os.environ if environ is None else environ
        return cls(
            model_dir=Path(env.get("SM_MODEL_DIR", f"{CONTAINER_ROOT}/model")),
            output_data_dir=Path(env.get("SM_OUTPUT_DATA_DIR", f"{CONTAINER_ROOT}/output/data")),
            output_dir=Path(env.get("SM_OUTPUT_DIR", f"{CONTAINER_ROOT}/output")),
            input_data_dir=Path(env.get("SM_INPUT_DIR", f"{CONTAINER_ROOT}/input")) / "data",
            num_cpus=int(env.get("SM_NUM_CPUS") or os.cpu_count() or 1),
        )

    def channel(self, name: str, environ: dict[str, str] | None = None) -> Path:
        """The folder of an input channel; a missing channel is a clear error, not a KeyError."""
        env = os.environ if environ is None else environ
        path = Path(env.get(f"SM_CHANNEL_{name.upper()}", self.input_data_dir / name))
        if not path.is_dir():
            raise DatasetError(f"input channel '{name}' not found: {path} does not exist "
                               f"(set SM_CHANNEL_{name.upper()} or pass the channel to the job)")
        return path


def granted_cpus(environ: dict[str, str] | None = None) -> int | None:
    """The cores the local executor grants this job now; None on SageMaker (no file) or when unreadable."""
    env = os.environ if environ is None else environ
    path = env.get(CPU_GRANT_FILE_ENV)
    if not path:
        return None
    try:
        value = int(Path(path).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return value if value >= 1 else None


def str2bool(value: str | bool) -> bool:
    """SageMaker passes hyperparameters as strings: accept true/false/1/0/yes/no."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def write_failure(env: JobEnv, message: str) -> None:
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason; write it when we can."""
    try:
        atomic_write_text(env.output_dir / "failure", message[:1024])
    except OSError:
        pass


def copy_inference_code(model_dir: Path, framework: str) -> None:
    """Ship inference.py (+ models.py, requirements.txt) as model.tar.gz's code/, SageMaker's layout.

    The source bundle carries the ``inference`` package; without it the model still saves, unserved.
    """
    try:
        from inference.packaging import copy_code
    except ImportError:
        LOG.warning("inference package not in the source bundle; model.tar.gz will have no code/ folder")
        return
    copy_code(model_dir, framework)
