"""The start of a local training job: the framework container's own launcher, on this machine.

``python -m mlops.local.containers pytorch|tensorflow|generic|xgboost`` runs in the job's process, with
SAGEMAKER_BASE_DIR pointing at the job's folder (``input/config/*.json``, ``input/data/<channel>``, ``model``,
``output``, ``code``), exactly where SageMaker's containers look under /opt/ml:

- PyTorch and TensorFlow script mode, and any other image: sagemaker-training's ``trainer.train()``, with
  SAGEMAKER_TRAINING_MODULE set as the framework image sets it (sagemaker_pytorch_container.training:main for
  PyTorch). The toolkit downloads and extracts the source bundle, reads the config files, computes SM_*, and
  runs ``python <sagemaker_program> --hp value ...`` from the code folder.
- XGBoost (sagemaker-xgboost 1.7-1): sagemaker-containers 2.8.6's ``_trainer.train()`` with the XGBoost
  container's training module reproduced below (it is not on PyPI): ``framework.modules.run_module(...)``,
  which prepares the code folder as a package, pip-installs it and runs ``python -m <program minus .py>``.

What differs from a real container, and only this: S3 downloads come from the local store; a requirements
install checks the requirements instead of changing this machine's environment (and fails, naming what is
missing); a package install goes to a folder of the job; the instance's CPU count is the share of the CPU
budget the job was granted (MLOPS_GRANTED_CPUS); sagemaker-containers gets the collections.Mapping alias its
image patches in for Python >= 3.10.
"""

from __future__ import annotations

import collections
import collections.abc
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

FRAMEWORK_MODULES = {  # SAGEMAKER_TRAINING_MODULE as each framework image sets it
    "pytorch": "sagemaker_pytorch_container.training:main",
    "tensorflow": "sagemaker_tensorflow_container.training:main",
    "generic": None,
}
XGBOOST_MODULE = "mlops.local.containers:xgboost_main"


class RequirementsNotMet(Exception):
    """The job's requirements.txt asks for what this environment does not have."""


def unmet_requirements(requirements_file: Path) -> list[str]:
    """The lines of a requirements file that the running interpreter does not satisfy (markers honoured)."""
    missing = []
    for number, line in enumerate(requirements_file.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if text.startswith("-"):
            missing.append(f"line {number}: pip option {text!r} cannot be checked locally")
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as exc:
            missing.append(f"line {number}: {text!r} is not a requirement ({exc})")
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(f"{text} (not installed)")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(f"{text} (installed: {installed})")
    return missing


def check_requirements(path: str) -> None:
    """What the container's ``pip install -r requirements.txt`` would do, checked instead of done."""
    requirements = Path(path) / "requirements.txt"
    missing = unmet_requirements(requirements)
    if missing:
        raise RequirementsNotMet(
            f"{requirements}: the container would pip-install these, and this environment does not satisfy them "
            f"(local jobs never change it): {'; '.join(missing)}. Install them into the environment that runs "
            "mlops, or remove them from the job's requirements.txt.")


class NoSuchObject(Exception):
    """An s3:// object the store does not hold. Deliberately not an OSError: the launchers exit with an
    exception's ``errno``, and an OSError without one makes sagemaker-training exit 0 (int(None) raises
    TypeError inside its handler), so a failed download would pass for a finished job; S3's own ClientError
    has no errno and exits 1, as this does."""


def _from_store(url: str, dst: str) -> None:
    from mlops.store import s3_uri_to_path

    source = s3_uri_to_path(url)
    if not source.is_file():
        raise NoSuchObject(f"{url}: no such object in the local store ({source})")
    shutil.copyfile(source, dst)


def _granted_cpus() -> int:
    return int(os.environ.get("MLOPS_GRANTED_CPUS") or os.cpu_count() or 1)


def run_toolkit(framework: str) -> None:
    """sagemaker-training's container entry point (the images' ``train`` command)."""
    from sagemaker_training import environment, files, modules, trainer

    files.s3_download = _from_store
    environment.num_cpus = _granted_cpus

    def install_requirements(path: str, capture_error: bool = False) -> None:
        try:
            check_requirements(path)
        except RequirementsNotMet as exc:
            from sagemaker_training import errors

            raise errors.ClientError(str(exc)) from None

    modules.install_requirements = install_requirements
    module = FRAMEWORK_MODULES[framework]
    if module:
        os.environ["SAGEMAKER_TRAINING_MODULE"] = module
    else:
        os.environ.pop("SAGEMAKER_TRAINING_MODULE", None)
    trainer.train()


def run_containers() -> None:
    """sagemaker-containers 2.8.6's container entry point, as the sagemaker-xgboost 1.7-1 image runs it."""
    collections.Mapping = collections.abc.Mapping  # the image patches this alias in for Python >= 3.10
    from sagemaker_containers import _env, _errors, _files, _modules, _trainer

    _files.s3_download = _from_store
    _env.num_cpus = _granted_cpus

    def install(path: str, capture_error: bool = False) -> None:
        """``pip install . [-r requirements.txt]`` into a folder of the job instead of this environment."""
        if _modules.has_requirements(path):
            try:
                check_requirements(path)
            except RequirementsNotMet as exc:
                raise _errors.InstallModuleError(str(exc)) from None
        target = site_packages()
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                   "--no-index", "--target", str(target), "."]
        completed = subprocess.run(command, cwd=path, capture_output=True, text=True, check=False)
        if completed.returncode:
            raise _errors.InstallModuleError(f"{' '.join(command)} failed: {completed.stderr.strip()[-2000:]}")

    def site_packages() -> Path:
        return Path(_env.base_dir) / "site-packages"

    # The image's site-packages is on the path before anything runs: the training environment's PYTHONPATH
    # (computed before the install) must hold the folder the install writes to.
    site_packages().mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(site_packages()))
    _modules.install = install
    os.environ["SAGEMAKER_TRAINING_MODULE"] = XGBOOST_MODULE
    _trainer.train()


def xgboost_main() -> None:
    """sagemaker_xgboost_container.training:main for script mode (aws/sagemaker-xgboost-container,
    src/sagemaker_xgboost_container/training.py): run the user entry point as a module. Algorithm mode (no
    sagemaker_program) is the built-in XGBoost, which this project does not use."""
    from sagemaker_containers.beta import framework

    env = framework.training_env()
    if env.user_entry_point is None:
        raise RuntimeError("the XGBoost container's algorithm mode (no sagemaker_program) does not run locally")
    framework.modules.run_module(env.module_dir, env.to_cmd_args(), env.to_env_vars(), env.module_name,
                                 capture_error=False)
    sys.exit(0)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in (*FRAMEWORK_MODULES, "xgboost"):
        print(f"usage: python -m mlops.local.containers {'|'.join([*FRAMEWORK_MODULES, 'xgboost'])}", file=sys.stderr)
        sys.exit(2)
    if args[0] == "xgboost":
        run_containers()
    else:
        run_toolkit(args[0])


if __name__ == "__main__":
    main()
