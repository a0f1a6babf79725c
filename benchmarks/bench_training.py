"""Benchmark: full-MNIST training on this machine's CPU, ours against the reference everyone runs.

Measures, in one sitting:
- our CNN (training/train_cnn.py's ``train``), twice: the default 15-epoch schedule (final accuracy,
  target >= 99.4% within 6 min) and a short 4-epoch schedule without cutout (time-to-99.0%, target
  <= 120 s); test accuracy after every epoch with the training wall-clock time (test evaluation excluded);
- our XGBoost baseline (training/train_xgboost.py): test accuracy and time (target >= 97.7% in <= 2 min);
- the reference, pytorch/examples ``mnist/main.py`` (its network, Adadelta lr 1.0, StepLR 0.7,
  batch 64, torchvision MNIST + DataLoader), until it reaches 99.0% or its time cap.

Run: ``.venv/bin/python benchmarks/bench_training.py`` (add ``--skip-reference`` for a quick run).
Writes benchmarks/results/training.json and training.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch import nn

from training import preprocess, train_xgboost
from training.datasets import load_split
from training.train_cnn import EpochRecord, TrainConfig, evaluate_model, parse_args, to_tensors, train

RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT / "data" / "mnist"


def config_with(overrides: str) -> TrainConfig:
    """TrainConfig defaults with ``name=value,...`` overrides (the train_cnn.py hyperparameters)."""
    argv = []
    for item in filter(None, overrides.split(",")):
        name, value = item.split("=", 1)
        argv += ["--" + name.replace("_", "-"), value]
    config, unknown = parse_args(argv)
    if unknown:
        raise SystemExit(f"unknown CNN settings: {unknown}")
    return config


def prepare_splits(workdir: Path) -> Path:
    out = workdir / "preprocessed"
    preprocess.run(preprocess.parse_args(["--input-dir", str(DATA), "--output-dir", str(out)]))
    return out


def bench_cnn(splits: Path, config: TrainConfig, threads: int) -> dict:
    torch.set_num_threads(threads)
    train_split = load_split(splits / "train", "train")
    val_split = load_split(splits / "validation", "validation")
    x_test, y_test = to_tensors(load_split(splits / "test", "test"))
    curve: list[dict] = []
    eval_seconds = 0.0

    def on_epoch(record: EpochRecord, model: nn.Module) -> None:
        nonlocal eval_seconds
        start = time.perf_counter()
        _, test_acc = evaluate_model(model, x_test, y_test)
        eval_seconds += time.perf_counter() - start
        curve.append({"epoch": record.epoch, "train_seconds": round(record.elapsed_seconds, 2),
                      "val_accuracy": record.val_accuracy, "test_accuracy": test_acc})
        print(f"  cnn epoch {record.epoch}: {record.elapsed_seconds:6.1f} s  val {record.val_accuracy:.4f}  "
              f"test {test_acc:.4f}", flush=True)

    started = time.perf_counter()
    train(config, train_split, val_split, num_classes=10, on_epoch=on_epoch)
    wall = time.perf_counter() - started - eval_seconds
    reached = next((c["train_seconds"] for c in curve if c["test_accuracy"] >= 0.99), None)
    return {"config": asdict(config), "curve": curve, "train_seconds": round(wall, 1),
            "time_to_99_0_seconds": reached, "final_test_accuracy": curve[-1]["test_accuracy"],
            "best_test_accuracy": max(c["test_accuracy"] for c in curve)}


def bench_xgboost(splits: Path, workdir: Path, threads: int, extra: list[str]) -> dict:
    env = {"SM_CHANNEL_TRAIN": str(splits / "train"), "SM_CHANNEL_VALIDATION": str(splits / "validation"),
           "SM_MODEL_DIR": str(workdir / "xgb-model"), "SM_OUTPUT_DATA_DIR": str(workdir / "xgb-output"),
           "SM_OUTPUT_DIR": str(workdir / "xgb-out"), "SM_NUM_CPUS": str(threads)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        started = time.perf_counter()
        args = train_xgboost.parse_args(extra)
        booster, summary = train_xgboost.run(args, train_xgboost.JobEnv.from_environ())
        seconds = time.perf_counter() - started
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    test = load_split(splits / "test", "test")
    accuracy = float((train_xgboost.predict_classes(booster, test.images) == test.labels).mean())
    print(f"  xgboost: {seconds:.1f} s, test {accuracy:.4f}", flush=True)
    return {"args": vars(args), "train_seconds": round(seconds, 1), "test_accuracy": accuracy, **summary}


class ReferenceNet(nn.Module):
    """pytorch/examples mnist/main.py ``Net``, unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def bench_reference(workdir: Path, threads: int, cap_seconds: float, max_epochs: int = 14) -> dict:
    """The reference's training loop as its main.py runs it on a CPU (batch 64, Adadelta, StepLR)."""
    from torchvision import datasets, transforms

    raw = workdir / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(DATA / f"{name}.gz") as src, open(raw / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    train_set = datasets.MNIST(str(workdir / "tv"), train=True, download=False, transform=transform)
    test_set = datasets.MNIST(str(workdir / "tv"), train=False, download=False, transform=transform)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)
    model = ReferenceNet()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    curve: list[dict] = []
    train_seconds = 0.0
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        model.train()
        for data, target in train_loader:
            optimizer.zero_grad()
            F.nll_loss(model(data), target).backward()
            optimizer.step()
        scheduler.step()
        train_seconds += time.perf_counter() - start
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in test_loader:
                correct += int((model(data).argmax(1) == target).sum())
        accuracy = correct / len(test_set)
        curve.append({"epoch": epoch, "train_seconds": round(train_seconds, 1), "test_accuracy": accuracy})
        print(f"  reference epoch {epoch}: {train_seconds:6.1f} s  test {accuracy:.4f}", flush=True)
        if accuracy >= 0.99 or train_seconds >= cap_seconds:
            break
    reached = next((c["train_seconds"] for c in curve if c["test_accuracy"] >= 0.99), None)
    return {"curve": curve, "time_to_99_0_seconds": reached, "capped_at_seconds": cap_seconds}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in (("cnn", "our CNN, 15-epoch schedule"), ("cnn_fast", "our CNN, 4-epoch schedule")):
        if results.get(key):
            curve = results[key]["curve"]
            ax.plot([c["train_seconds"] for c in curve], [100 * c["test_accuracy"] for c in curve], marker="o",
                    label=label)
    if results.get("reference"):
        ref = results["reference"]["curve"]
        ax.plot([c["train_seconds"] for c in ref], [100 * c["test_accuracy"] for c in ref], marker="s",
                label="pytorch/examples mnist")
    if results.get("xgboost"):
        xgb = results["xgboost"]
        ax.scatter([xgb["train_seconds"]], [100 * xgb["test_accuracy"]], marker="^", s=80, color="tab:red",
                   label="our XGBoost", zorder=3)
    for level, style in ((99.0, ":"), (99.4, "--")):
        ax.axhline(level, linestyle=style, color="grey", linewidth=1)
    ax.axvline(120, linestyle=":", color="tab:green", linewidth=1, label="120 s target")
    ax.set_ylim(96.5, 100)
    ax.set_xlabel("training time (s), 2-core CPU")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Full MNIST: test accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cnn-args", default="", help="TrainConfig overrides for the full run: name=value,...")
    parser.add_argument("--fast-cnn-args", default="epochs=4,cutout_prob=0.0",
                        help="TrainConfig overrides for the short time-to-99%% run ('' skips it)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-xgboost", action="store_true")
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--reference-cap-seconds", type=float, default=900)
    parser.add_argument("--xgboost-args", default="", help="extra train_xgboost.py arguments, space-separated")
    parser.add_argument("--output", default=str(RESULTS / "training.json"))
    args = parser.parse_args()

    results: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                 "torch": torch.__version__, "threads": args.threads},
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "targets": {"cnn_time_to_99_0_seconds": 120, "cnn_final_accuracy": 0.994,
                                 "cnn_budget_seconds": 360, "xgboost_accuracy": 0.977, "xgboost_seconds": 120}}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        workdir = Path(tmp)
        splits = prepare_splits(workdir)
        if not args.skip_cnn:
            config = config_with(args.cnn_args)
            print(f"CNN, full schedule: {config}", flush=True)
            results["cnn"] = bench_cnn(splits, config, args.threads)
            if args.fast_cnn_args:
                config = config_with(args.fast_cnn_args)
                print(f"CNN, short schedule: {config}", flush=True)
                results["cnn_fast"] = bench_cnn(splits, config, args.threads)
        if not args.skip_xgboost:
            print("XGBoost", flush=True)
            results["xgboost"] = bench_xgboost(splits, workdir, args.threads, args.xgboost_args.split())
        if not args.skip_reference:
            print("Reference: pytorch/examples mnist/main.py", flush=True)
            results["reference"] = bench_reference(workdir, args.threads, args.reference_cap_seconds)
    results["load_average_after"] = os.getloadavg()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if "cnn" in results:
        plot(results, output.with_suffix(".png"))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk not in ("curve", "config", "args")}
                      for k, v in results.items() if isinstance(v, dict)}, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
