"""Training job (XGBoost script mode): the gradient-boosted-trees baseline on flattened pixels.

Images larger than 32x32 are area-downsampled to at most 32x32 per channel first (training/features.py); the
model_config.json records that as ``xgboost_input`` and the endpoint reduces requests the same way.

Hist trees with few bins and column sampling keep a full-MNIST fit inside two minutes on two
cores; early stopping watches validation log-loss. Writes ``xgboost-model.json`` (XGBoost's own
JSON format: no pickle) + ``model_config.json`` to SM_MODEL_DIR, and a metrics line every
``log-every`` rounds for SageMaker's metric_definitions.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a job script: make the `training` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import xgboost as xgb

from training.atomic import atomic_write_json, staged_dir
from training.datasets import DatasetError, load_manifest, load_split
from training.features import xgboost_features, xgboost_input
from training.job_env import JobEnv, copy_inference_code, granted_cpus, write_failure
from training.metrics import format_metrics_line

LOG = logging.getLogger("train_xgboost")
MODEL_FILE = "xgboost-model.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-round", type=int, default=300)
    parser.add_argument("--max-depth", type=int, default=6)
    parser.add_argument("--eta", type=float, default=0.3)
    parser.add_argument("--max-bin", type=int, default=16)
    parser.add_argument("--colsample-bytree", type=float, default=0.5)
    parser.add_argument("--subsample", type=float, default=1.0)
    parser.add_argument("--min-child-weight", type=float, default=1.0)
    parser.add_argument("--early-stopping-rounds", type=int, default=20)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--nthread", type=int, default=0, help="0 = SM_NUM_CPUS")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        LOG.info("ignoring arguments not meant for this script: %s", " ".join(unknown))
    errors = []
    if args.num_round < 1:
        errors.append(f"num-round must be >= 1, got {args.num_round}")
    if not 0 < args.eta <= 1:
        errors.append(f"eta must be in (0, 1], got {args.eta}")
    if args.max_bin < 2:
        errors.append(f"max-bin must be >= 2, got {args.max_bin}")
    for name in ("colsample_bytree", "subsample"):
        if not 0 < getattr(args, name) <= 1:
            errors.append(f"{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    if errors:
        raise ValueError("invalid hyperparameters: " + "; ".join(errors))
    return args


def flatten(images: np.ndarray, spec: dict | None = None) -> np.ndarray:
    """The booster's rows: flattened pixels, area-downsampled first when ``spec`` (xgboost_input) says so."""
    return xgboost_features(images, spec)


def predict_classes(booster: xgb.Booster, images: np.ndarray, spec: dict | None = None) -> np.ndarray:
    return booster.inplace_predict(flatten(images, spec)).argmax(axis=1)


class MetricsLines(xgb.callback.TrainingCallback):
    """Print one metrics line every ``every`` rounds (and the last), like the CNN does per epoch."""

    def __init__(self, every: int, val_labels: np.ndarray) -> None:
        self.every = max(1, every)
        self.val_labels = val_labels
        self.started = time.perf_counter()

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        round_no = epoch + 1
        if round_no % self.every == 0 or round_no == 1:
            print(format_metrics_line(
                round=round_no,
                train_loss=evals_log["train"]["mlogloss"][-1],
                val_loss=evals_log["validation"]["mlogloss"][-1],
                val_accuracy=1.0 - evals_log["validation"]["merror"][-1],
                elapsed_seconds=time.perf_counter() - self.started,
            ), flush=True)
        return False


class FollowCpuGrant(xgb.callback.TrainingCallback):
    """Use as many threads as the local executor grants now (more once the other jobs are done).

    Does nothing on SageMaker (no grant file) or when ``nthread`` is set.
    """

    def __init__(self, nthread: int) -> None:
        self.nthread = nthread

    def after_iteration(self, model, epoch: int, evals_log) -> bool:
        granted = granted_cpus()
        if granted is not None and granted != self.nthread:
            LOG.info("CPU grant changed: %d -> %d threads", self.nthread, granted)
            model.set_param("nthread", granted)
            self.nthread = granted
        return False


def run(args: argparse.Namespace, env: JobEnv) -> tuple[xgb.Booster, dict]:
    train_dir, val_dir = env.channel("train"), env.channel("validation")
    manifest = load_manifest(train_dir)
    train_split, val_split = load_split(train_dir, "train"), load_split(val_dir, "validation")
    num_classes = int(manifest["num_classes"])
    spec = xgboost_input(manifest["image_shape"])
    if spec:
        LOG.info("images %s: area-downsampled to at most %dx%d per channel for the trees",
                 "x".join(map(str, manifest["image_shape"])), spec["size"], spec["size"])
    train_rows, val_rows = flatten(train_split.images, spec), flatten(val_split.images, spec)
    dtrain = xgb.QuantileDMatrix(train_rows, label=train_split.labels, max_bin=args.max_bin)
    dval = xgb.QuantileDMatrix(val_rows, label=val_split.labels, ref=dtrain, max_bin=args.max_bin)
    params = {
        "objective": "multi:softprob", "num_class": num_classes, "tree_method": "hist",
        "max_depth": args.max_depth, "eta": args.eta, "max_bin": args.max_bin,
        "colsample_bytree": args.colsample_bytree, "subsample": args.subsample,
        "min_child_weight": args.min_child_weight, "eval_metric": ["merror", "mlogloss"],
        "seed": args.seed, "nthread": args.nthread or env.num_cpus,
    }
    started = time.perf_counter()
    booster = xgb.train(params, dtrain, num_boost_round=args.num_round,
                        evals=[(dtrain, "train"), (dval, "validation")], verbose_eval=False,
                        early_stopping_rounds=args.early_stopping_rounds or None,
                        callbacks=[MetricsLines(args.log_every, val_split.labels)]
                        + ([] if args.nthread else [FollowCpuGrant(params["nthread"])]))
    seconds = time.perf_counter() - started
    best_round = int(getattr(booster, "best_iteration", args.num_round - 1)) + 1
    if booster.num_boosted_rounds() > best_round:
        booster = booster[:best_round]
    val_accuracy = float((booster.inplace_predict(val_rows).argmax(axis=1) == val_split.labels).mean())
    summary = {"rounds": booster.num_boosted_rounds(), "fit_seconds": round(seconds, 1), "val_accuracy": val_accuracy}
    print(format_metrics_line(round=summary["rounds"], val_accuracy=val_accuracy), flush=True)
    LOG.info("XGBoost: %d rounds in %.1f s, validation accuracy %.4f", summary["rounds"], seconds, val_accuracy)
    with staged_dir(env.model_dir) as staging:
        booster.save_model(staging / MODEL_FILE)
        atomic_write_json(staging / "model_config.json", {
            "framework": "xgboost", "num_classes": num_classes, "class_names": manifest["class_names"],
            "image_shape": manifest["image_shape"], "normalization": manifest["normalization"],
            "data_format": manifest.get("format", "idx"),
            **({"xgboost_input": spec} if spec else {}),
            "hyperparameters": {k: v for k, v in vars(args).items()}, **summary,
        })
        copy_inference_code(staging, "xgboost")
    return booster, summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = JobEnv.from_environ()
    try:
        run(parse_args(argv), env)
    except (DatasetError, ValueError, xgb.core.XGBoostError) as exc:
        write_failure(env, str(exc))
        print(f"train_xgboost failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
