"""Benchmark: seconds per epoch of full MNIST (54,000 images) for train_cnn.py's training step, by setting.

Times the real step (augment_batch, forward under the chosen precision, backward, SGD) on random 28x28 batches:
float32 vs bfloat16 autocast, NCHW vs channels-last, 1 vs 2 threads, with and without augmentation, at the
default width and batch size unless a row says otherwise. Each row is timed ``--repeats`` times, interleaved
with the others (this machine's speed drifts), over ``--steps`` steps after 5 warm-up steps; the median counts.

Run: ``.venv/bin/python benchmarks/bench_epoch.py``. Writes benchmarks/results/epoch.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F

from training.models import build_model
from training.train_cnn import TrainConfig, augment_batch

EPOCH_IMAGES = 54_000
ROWS = [
    {"threads": 1, "precision": "fp32", "channels_last": False},
    {"threads": 2, "precision": "fp32", "channels_last": False},
    {"threads": 1, "precision": "bf16", "channels_last": False},
    {"threads": 2, "precision": "bf16", "channels_last": False},
    {"threads": 1, "precision": "bf16", "channels_last": True},
    {"threads": 2, "precision": "bf16", "channels_last": True},
    {"threads": 2, "precision": "bf16", "channels_last": True, "augment": False},
    {"threads": 2, "precision": "bf16", "channels_last": True, "batch_size": 64},
    {"threads": 2, "precision": "bf16", "channels_last": True, "batch_size": 256},
]


def seconds_per_epoch(row: dict, steps: int) -> float:
    defaults = TrainConfig()
    batch = row.get("batch_size", defaults.batch_size)
    torch.set_num_threads(row["threads"])
    torch.manual_seed(0)
    model = build_model("compact", 10, kernel_size=defaults.kernel_size, width=row.get("width", defaults.width),
                        dropout=defaults.dropout, in_channels=1, image_size=28)
    layout = torch.channels_last if row["channels_last"] else torch.contiguous_format
    model = model.to(memory_format=layout)
    optimizer = torch.optim.SGD(model.parameters(), lr=defaults.lr, momentum=0.9, nesterov=True)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    generator = torch.Generator().manual_seed(0)
    bf16 = row["precision"] == "bf16"

    def step() -> None:
        xb = augment_batch(x, defaults.rotation_degrees, defaults.cutout, defaults.cutout_prob, -0.42, generator) \
            if row.get("augment", True) else x
        xb = xb.contiguous(memory_format=layout)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(xb), y)
        loss.backward()
        optimizer.step()

    for _ in range(5):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps / batch * EPOCH_IMAGES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    times: list[list[float]] = [[] for _ in ROWS]
    for repeat in range(args.repeats):
        for i, row in enumerate(ROWS):
            times[i].append(seconds_per_epoch(row, args.steps))
            print(f"repeat {repeat + 1}: {row} -> {times[i][-1]:.1f} s/epoch", flush=True)
    results = [{**row, "seconds_per_epoch": round(statistics.median(t), 2), "runs": [round(v, 2) for v in t]}
               for row, t in zip(ROWS, times, strict=True)]
    out = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__,
                       "bf16_native": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())},
           "defaults": {"width": TrainConfig().width, "batch_size": TrainConfig().batch_size},
           "load1_before": round(os.getloadavg()[0], 2), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "rows": results}
    path = ROOT / "benchmarks" / "results" / "epoch.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    for row in results:
        print(f"{row['seconds_per_epoch']:6.1f} s/epoch  {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
