"""The images' launchers as the local executor runs them: a missing code bundle must fail the job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.local.containers import NoSuchObject, _from_store
from tests.helpers import ROOT


def _job_folder(base: Path, program: str = "train.py") -> None:
    config = base / "input" / "config"
    config.mkdir(parents=True)
    hyperparameters = {"sagemaker_program": json.dumps(program),
                       "sagemaker_submit_directory": json.dumps("s3://mlops-local/code/missing/sourcedir.tar.gz")}
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"],
                                                           "network_interface_name": "lo"}))
    (config / "inputdataconfig.json").write_text("{}")
    (base / "output").mkdir()
    (base / "model").mkdir()


def test_a_missing_object_is_not_an_oserror(tmp_path, monkeypatch):
    """sagemaker-training exits with an exception's errno; an OSError without one would make it exit 0."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    with pytest.raises(NoSuchObject, match="no such object in the local store") as caught:
        _from_store("s3://mlops-local/nope.tar.gz", str(tmp_path / "dst"))
    assert not isinstance(caught.value, OSError)


@pytest.mark.parametrize("launcher", ["pytorch", "xgboost"])
def test_a_job_whose_code_cannot_be_downloaded_fails(tmp_path, launcher):
    base = tmp_path / "job"
    _job_folder(base)
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "MLOPS_HOME": str(tmp_path / "store"),
           "SM_STUDIO_LOCAL_MODE": "True", "TRAINING_JOB_NAME": "job-1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mlops.local.containers", launcher], cwd=base, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no such object in the local store" in (base / "output" / "failure").read_text()


def test_training_jobs_get_the_store_as_an_absolute_path(tmp_path, monkeypatch):
    """Jobs run in their own folder: a relative ./.mlops there would be another, empty store."""
    from mlops.local.training import _environment

    monkeypatch.delenv("MLOPS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    env = _environment("job-1", tmp_path / "job", 1, {}, "algo-1", ["algo-1"])
    assert env["MLOPS_HOME"] == str(tmp_path / ".mlops")
