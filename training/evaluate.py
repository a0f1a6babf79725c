"""Processing job: score a model on the test split, beside its baseline's figures.

The model is loaded and run through the same handlers the endpoint serves (inference/inference.py), so the
figures in the Model Registry are the figures of the code that will answer requests: a TensorFlow model's test
images go as .npy request bodies through its own code/inference.py input_handler, TF Serving's predict API
(inference/tf_serving.py, in process) and output_handler. Writes
``evaluation.json`` in SageMaker's model quality format (``multiclass_classification_metrics``) and
``confusion_matrix.png``. With ``--baseline-dir`` (another evaluation's output: the XGBoost baseline scored in
its own image, which has xgboost where the PyTorch image does not) its figures go under ``baseline``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a job script: make the `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from training.atomic import atomic_write_json, staged_dir
from training.datasets import DatasetError, load_manifest, load_split

LOG = logging.getLogger("evaluate")
MODEL_ARCHIVE = "model.tar.gz"
BOOTSTRAP_ROUNDS = 100
REPORT = "evaluation.json"
MODEL_NAMES = {"pytorch": "cnn", "tensorflow": "cnn", "xgboost": "xgboost"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", "--cnn-model-dir", dest="model_dir", default="/opt/ml/processing/model",
                        help="the model to score (model.tar.gz or its contents)")
    parser.add_argument("--baseline-dir", default=None, help="the baseline's evaluation output (evaluation.json)")
    parser.add_argument("--xgboost-model-dir", default=None,
                        help="score the baseline model in this job too (needs xgboost in the image)")
    parser.add_argument("--test-dir", default="/opt/ml/processing/test")
    parser.add_argument("--output-dir", default="/opt/ml/processing/evaluation")
    parser.add_argument("--bootstrap-rounds", type=int, default=BOOTSTRAP_ROUNDS)
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def unpack_model(model_dir: Path, workdir: Path, what: str) -> Path:
    """A training job's output is model.tar.gz; accept that or an already-extracted folder."""
    if not model_dir.is_dir():
        raise DatasetError(f"{what} model input {model_dir} does not exist (missing channel?)")
    archive = model_dir / MODEL_ARCHIVE
    if not archive.is_file():
        if (model_dir / "model_config.json").is_file():
            return model_dir
        raise DatasetError(f"{model_dir}: expected {MODEL_ARCHIVE} or model_config.json for the {what} model")
    target = workdir / what
    target.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{archive}: unreadable model archive ({exc})") from exc
    return target


def raw_pixels(images: np.ndarray, normalization: dict) -> np.ndarray:
    """Undo preprocess's normalization: the handlers take raw 0..255 pixels, as requests do."""
    return (images * normalization["std"] + normalization["mean"]) / normalization["scale"]


def _metric_set(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="weighted", zero_division=0)
    return np.array([accuracy_score(y_true, y_pred), precision, recall, f1])


def quality_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str], rounds: int, seed: int) -> dict:
    """SageMaker model quality metrics; standard deviations from a seeded bootstrap over the test set."""
    values = _metric_set(y_true, y_pred)
    rng = np.random.default_rng(seed)
    samples = np.array([_metric_set(y_true[idx], y_pred[idx])
                        for idx in (rng.integers(0, len(y_true), len(y_true)) for _ in range(rounds))])
    spread = samples.std(axis=0) if rounds > 1 else np.zeros(4)
    constant = np.full_like(y_true, np.bincount(y_true).argmax())
    constant_values = _metric_set(y_true, constant)
    labels = list(range(len(class_names)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    names = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")
    metrics: dict = {}
    for i, name in enumerate(names):
        metrics[name] = {"value": float(values[i]), "standard_deviation": float(spread[i])}
        metrics[f"{name}_best_constant_classifier"] = {"value": float(constant_values[i]), "standard_deviation": 0.0}
    metrics["confusion_matrix"] = {
        class_names[t]: {class_names[p]: int(matrix[t, p]) for p in labels} for t in labels
    }
    return metrics


def plot_confusion(matrix_json: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    names = list(matrix_json)
    matrix = np.array([[matrix_json[t][p] for p in names] for t in names])
    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=ax, colorbar=False, values_format="d", cmap="Blues")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def score(folder: Path, workdir: Path, pixels: np.ndarray, labels: np.ndarray, class_names: list[str],
          args: argparse.Namespace, what: str = "scored") -> tuple[str, dict]:
    """(model name, quality metrics) of the model in ``folder`` on the test pixels."""
    from inference.inference import model_fn, read_config

    model_dir = unpack_model(folder, workdir, what)
    try:
        framework = read_config(str(model_dir))["framework"]
        if framework == "tensorflow":  # the handlers of its code/ around TF Serving's predict API, in process
            from inference.tf_serving import TensorFlowModel

            model = TensorFlowModel(model_dir)
        else:
            model = model_fn(str(model_dir))
    except ImportError as exc:
        raise DatasetError(f"{folder}: this image cannot load the model ({exc}); score it in an image that "
                           "has its framework (the pipeline's EvaluateBaseline step runs in the XGBoost image)") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise DatasetError(f"{folder}: cannot load the model ({exc})") from exc
    name = MODEL_NAMES.get(model.framework, model.framework)
    if model.num_classes != len(class_names):
        raise DatasetError(f"{folder}: the {name} model has {model.num_classes} classes, the test set "
                           f"{len(class_names)}")
    if model.framework == "tensorflow":
        predicted = model.predict_classes(pixels)
    else:
        predicted = np.concatenate([model.predict_proba(pixels[i:i + 2000]).argmax(1)
                                    for i in range(0, len(pixels), 2000)])
    metrics = quality_metrics(labels, predicted, class_names, args.bootstrap_rounds, args.seed)
    LOG.info("%s test accuracy %.4f", name, metrics["accuracy"]["value"])
    return name, metrics


def read_baseline(folder: Path, test_samples: int) -> dict:
    """The baseline's own evaluation.json, checked to be on the same test split."""
    path = folder / REPORT
    try:
        report = json.loads(path.read_text())
        metrics = report["multiclass_classification_metrics"]
        float(metrics["accuracy"]["value"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: not a baseline evaluation ({exc})") from exc
    if report.get("test_samples") != test_samples:
        raise DatasetError(f"{path}: the baseline was scored on {report.get('test_samples')} test images, "
                           f"this model on {test_samples}")
    return report


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    test_dir = Path(args.test_dir)
    manifest = load_manifest(test_dir)
    test = load_split(test_dir, "test")
    class_names = [str(n) for n in manifest["class_names"]]
    pixels = raw_pixels(test.images, manifest["normalization"]).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        name, metrics = score(Path(args.model_dir), Path(tmp), pixels, test.labels, class_names, args)
        baseline = None
        if args.xgboost_model_dir:
            baseline_name, baseline_metrics = score(Path(args.xgboost_model_dir), Path(tmp) / "baseline", pixels,
                                                    test.labels, class_names, args, what="baseline")
            baseline = {"model": baseline_name, "multiclass_classification_metrics": baseline_metrics}
    baseline_dir = Path(args.baseline_dir) if args.baseline_dir else None
    if baseline_dir is not None:
        report = read_baseline(baseline_dir, len(test))
        baseline = {"model": report.get("model", "baseline"),
                    "multiclass_classification_metrics": report["multiclass_classification_metrics"]}
    evaluation: dict = {"multiclass_classification_metrics": metrics, "model": name, "test_samples": len(test)}
    if baseline is not None:
        evaluation["baseline"] = baseline
        evaluation["accuracy_gain_over_baseline"] = (
            metrics["accuracy"]["value"] - baseline["multiclass_classification_metrics"]["accuracy"]["value"])
    with staged_dir(Path(args.output_dir)) as staging:
        atomic_write_json(staging / REPORT, evaluation)
        plot_confusion(metrics["confusion_matrix"], f"{name} on the test set: accuracy "
                       f"{metrics['accuracy']['value']:.4f}", staging / "confusion_matrix.png")
        if baseline is not None:
            copied = baseline_dir / "confusion_matrix.png" if baseline_dir is not None else None
            if copied is not None and copied.is_file():
                shutil.copyfile(copied, staging / "confusion_matrix_baseline.png")
            else:
                plot_confusion(baseline["multiclass_classification_metrics"]["confusion_matrix"],
                               f"{baseline['model']} baseline: accuracy "
                               f"{baseline['multiclass_classification_metrics']['accuracy']['value']:.4f}",
                               staging / "confusion_matrix_baseline.png")
    LOG.info("evaluation finished in %.1f s", time.perf_counter() - started)
    return evaluation


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        run(parse_args(argv))
    except DatasetError as exc:
        print(f"evaluate failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
