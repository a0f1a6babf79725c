"""Places that passed locally and in `mlops validate` but would fail or differ on SageMaker (issue 10's findings),
each proven with SageMaker's own container code where it installs. The others live beside the code they test:
outputs on separate mounts (tests/training/test_atomic.py), StopTraining as smdebug matches it
(tests/pipelines/test_tuning_debugging.py), retry classes (tests/mlops/local/test_executor.py and test_units.py),
and the XGBoost module launch end to end (tests/mlops/local/test_real_pipeline.py)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlops.cli import main
from mlops.local.containers import unmet_requirements
from pipelines.source_bundle import collect_bundle
from tests.helpers import ROOT, write_files
from tests.helpers.cache_keys import cache_keys
from tests.helpers.jobs import run_job, training_env
from tests.helpers.models import package_model, write_cnn_model_dir, write_xgboost_model_dir

pytestmark = pytest.mark.fidelity


def _shadow(tmp_path: Path, package: str) -> dict[str, str]:
    """PYTHONPATH that hides an installed package, as an image without it would."""
    write_files(tmp_path / "shadow", {f"{package}/__init__.py": f"raise ImportError('no {package} in this image')\n"})
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path / "shadow"), os.environ.get("PYTHONPATH")]))}


# -- XGBoost's launch ------------------------------------------------------------------------------------------

def test_the_xgboost_program_is_a_module_sagemaker_containers_can_run():
    """sagemaker-containers (the XGBoost 1.7-1 image) runs `python -m <sagemaker_program minus .py>`."""
    import collections
    import collections.abc

    collections.Mapping = collections.abc.Mapping  # as the image patches it in for Python >= 3.10
    from sagemaker_containers import _env

    definition = json.loads(CliRunner().invoke(main, ["definition"]).output)
    program = json.loads(next(s for s in definition["Steps"] if s["Name"] == "TrainXGBoost")
                         ["Arguments"]["HyperParameters"]["sagemaker_program"])
    module = _env.TrainingEnv._parse_module_name(program)
    names = {name for name, _ in collect_bundle().files}
    assert "/" not in module and f"{module.replace('.', '/')}.py" in names, module


# -- Debugger on SageMaker ---------------------------------------------------------------------------------------

def test_the_bundle_makes_the_training_images_install_smdebug_and_this_environment_has_it(tmp_path):
    """sagemaker-training pip-installs requirements.txt from the code root at start (the PyTorch 2.3 image has no
    smdebug); locally the same file is checked, never installed."""
    from sagemaker_training import _entry_point_type, modules

    files = dict(collect_bundle().files)
    assert b"smdebug" in files["requirements.txt"]
    code = tmp_path / "code"
    for name, data in files.items():
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        (code / name).write_bytes(data)
    assert modules.has_requirements(str(code))
    assert _entry_point_type.get(str(code), "training/train_cnn.py") is _entry_point_type._EntryPointType.PYTHON_PROGRAM
    assert unmet_requirements(code / "requirements.txt") == []
    (code / "requirements.txt").write_text("smdebug==0.1\nnot-a-package-anywhere>=1\n")
    assert unmet_requirements(code / "requirements.txt") == [
        "smdebug==0.1 (installed: 1.0.34)", "not-a-package-anywhere>=1 (not installed)"]


def test_a_hook_config_without_smdebug_fails_the_job_saying_why(tmp_path, mnist_slice):
    config = tmp_path / "input" / "config"
    config.mkdir(parents=True)
    (config / "debughookconfig.json").write_text(json.dumps({"LocalPath": str(tmp_path / "tensors")}))
    env = {**training_env(mnist_slice / "train", mnist_slice / "validation", tmp_path / "model", tmp_path / "output"),
           "SM_INPUT_CONFIG_DIR": str(config), **_shadow(tmp_path, "smdebug")}
    result = run_job("train_cnn.py", ["--epochs", "1"], env)
    assert result.returncode != 0
    failure = (tmp_path / "output" / "failure").read_text()
    assert "Debugger hook config" in failure and "smdebug cannot be imported" in failure
    assert not any((tmp_path / "model").glob("*.pth"))


# -- caching as SageMaker caches ---------------------------------------------------------------------------------

def test_cache_keys_hold_sagemakers_attributes_only():
    """A changed instance type is a hit (ResourceConfig is not in SageMaker's key), a changed hyperparameter a
    miss; and nothing in a key changes from one execution to the next (the StopTraining prefix is static)."""
    _, keys = cache_keys(ROOT)
    _, other_instances = cache_keys(ROOT, {"TrainingInstanceType": "ml.c5.2xlarge",
                                           "ProcessingInstanceType": "ml.m5.4xlarge"})
    assert other_instances == keys
    _, more_epochs = cache_keys(ROOT, {"CnnEpochs": "3"})
    assert {name for name in keys if more_epochs[name] != keys[name]} == {"TrainCNN"}
    definition = json.loads(CliRunner().invoke(main, ["definition"]).output)
    rules = next(s for s in definition["Steps"] if s["Name"] == "TrainCNN")["Arguments"]["DebugRuleConfigurations"]
    assert "Execution." not in json.dumps(rules)


# -- profiler --------------------------------------------------------------------------------------------------

def test_validate_shows_the_sdks_profiler_deprecation():
    result = CliRunner().invoke(main, ["validate"])
    assert result.exit_code == 0, result.output
    assert "WARNING [sdk] Framework profiling is deprecated from pytorch version 2.3" in result.output


def test_the_profiler_window_comes_from_the_file_sagemaker_writes(tmp_path):
    from training.debugger import session_from_env

    config = tmp_path / "config"
    config.mkdir()
    (config / "profilerconfig.json").write_text(json.dumps({"ProfilingParameters": {
        "DetailedProfilingConfig": '{"StartStep": 3, "NumSteps": 4, }', "LocalPath": str(tmp_path / "profiler")}}))
    session = session_from_env(None, {"SM_INPUT_CONFIG_DIR": str(config)})
    assert session is not None and session.window == (3, 4)
    assert session.profiler_dir == tmp_path / "profiler" / "framework"
    assert session_from_env(None, {"SM_INPUT_CONFIG_DIR": str(tmp_path / "empty")}) is None


# -- evaluation without a run-time install ------------------------------------------------------------------------

def test_the_cnn_is_evaluated_in_an_image_without_xgboost(tmp_path, mnist_slice):
    """Evaluate runs in the PyTorch image (no xgboost) with the baseline's figures from EvaluateBaseline, which
    runs in the XGBoost image; nothing is pip-installed."""
    source = (ROOT / "training" / "evaluate.py").read_text()
    assert "pip install" not in source and "subprocess" not in source
    xgboost_dir = write_xgboost_model_dir(tmp_path / "xgb", samples=600, rounds=5)
    baseline = run_job("evaluate.py", ["--model-dir", str(xgboost_dir), "--test-dir", str(mnist_slice / "test"),
                                       "--output-dir", str(tmp_path / "baseline"), "--bootstrap-rounds", "5"])
    assert baseline.returncode == 0, baseline.stderr
    cnn_dir = tmp_path / "cnn"
    package_model(write_cnn_model_dir(tmp_path / "cnn-files"), cnn_dir / "model.tar.gz")
    no_xgboost = _shadow(tmp_path, "xgboost")
    result = run_job("evaluate.py", ["--model-dir", str(cnn_dir), "--baseline-dir", str(tmp_path / "baseline"),
                                     "--test-dir", str(mnist_slice / "test"), "--output-dir", str(tmp_path / "out"),
                                     "--bootstrap-rounds", "5"], no_xgboost)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["model"] == "cnn" and report["baseline"]["model"] == "xgboost"
    assert (tmp_path / "out" / "confusion_matrix_baseline.png").is_file()
    refused = run_job("evaluate.py", ["--model-dir", str(xgboost_dir), "--test-dir", str(mnist_slice / "test"),
                                      "--output-dir", str(tmp_path / "refused")], no_xgboost)
    assert refused.returncode == 2 and "this image cannot load the model" in refused.stderr


# -- CodeBuild ---------------------------------------------------------------------------------------------------

def test_codebuild_installs_cpu_torch_and_upserts_the_file_it_validated():
    spec = yaml.safe_load((ROOT / "buildspec.yml").read_text())
    assert spec["env"]["variables"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert "TORCH_INDEX_URL" in (ROOT / "scripts" / "bootstrap.sh").read_text()
    commands = [shlex.split(c) for c in spec["phases"]["build"]["commands"] if ".venv/bin/mlops" in c]
    written = next(c for c in commands if c[1] == "definition")
    validated = next(c for c in commands if c[1] == "validate")
    run = next(c for c in commands if c[1] == "run")
    assert written[written.index("--output") + 1] == validated[2] == run[run.index("--definition") + 1]


def test_run_refuses_a_definition_file_built_from_other_code(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    definition = json.loads(CliRunner().invoke(main, ["definition"]).output)
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(definition).replace(collect_bundle().digest, "0" * 64))
    result = CliRunner().invoke(main, ["run", "--definition", str(stale), "--no-wait"])
    assert result.exit_code == 1 and "do not run the code in this working tree" in result.output
    assert not (tmp_path / "home").exists()


def test_the_training_toolkit_honours_the_jobs_base_dir(tmp_path):
    """sagemaker-training reads every path from SAGEMAKER_BASE_DIR, which the executor points at the job folder."""
    code = "from sagemaker_training import environment as e; print(e.model_dir, e.code_dir, e.input_config_dir)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "model"), str(tmp_path / "code"), str(tmp_path / "input" / "config")]
