"""What goes into a model's ``code/`` folder, so model.tar.gz deploys unchanged to SageMaker's PyTorch container
(or, for train_keras.py's SavedModel, to its TensorFlow Serving container).

The training jobs call :func:`code_files` (or :func:`copy_code`) and put the files under ``SM_MODEL_DIR/code``:
SageMaker unpacks model.tar.gz to /opt/ml/model and puts only ``code/`` on the path, hence ``models.py`` and
``features.py`` are copies of training/models.py and training/features.py there.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


REQUIREMENTS = {"pytorch": "requirements.txt", "xgboost": "requirements-xgboost.txt",
                "tensorflow": "requirements-tensorflow.txt"}


def code_files(framework: str = "pytorch") -> dict[str, Path]:
    """Name inside code/ -> source file. ``framework`` picks the requirements (xgboost needs the xgboost wheel).

    The TensorFlow Serving container imports the same inference.py for its input_handler/output_handler; the
    network itself is the SavedModel, so no models.py goes with it.
    """
    if framework not in REQUIREMENTS:
        raise ValueError(f"framework {framework!r} is not one of {', '.join(REQUIREMENTS)}")
    files = {
        "inference.py": ROOT / "inference" / "inference.py",
        "models.py": ROOT / "training" / "models.py",
        "features.py": ROOT / "training" / "features.py",  # the XGBoost baseline's downsampling of large images
        "requirements.txt": ROOT / "inference" / REQUIREMENTS[framework],
    }
    if framework == "tensorflow":
        del files["models.py"]
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"inference code files missing: {', '.join(missing)}")
    return files


def copy_code(model_dir: str | Path, framework: str = "pytorch") -> Path:
    """Copy the handlers into ``model_dir/code`` (created if needed); returns that folder."""
    code_dir = Path(model_dir) / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    for name, source in code_files(framework).items():
        shutil.copyfile(source, code_dir / name)
    return code_dir
