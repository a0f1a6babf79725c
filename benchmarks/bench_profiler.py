"""Benchmark: what the local Profiler costs a training job (target < 3% of training time).

The same CNN training job (train_cnn.py on a preprocessed MNIST slice, 1 core) runs alternately without
and with the TrainCNN ProfilerConfig of the real definition: the psutil system sampler at 500 ms on the
job's process tree, per-step timing and the torch.profiler window. Two figures:
- sampling cost: CPU seconds the sampler itself spent (measured around each sample) / training wall time;
- wall-time overhead: median(with) / median(without) - 1, with and without interleaved in the same run so
  both see the same machine load (the machine is shared; ``os.getloadavg()`` is recorded per run).

Run: ``.venv/bin/python benchmarks/bench_profiler.py [--repeats 3]``. Writes benchmarks/results/profiler.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "profiler.json"
TRAIN_ARGS = ["--epochs", "2", "--batch-size", "64"]


def profiler_config() -> dict:
    from pipelines.image_classification.debugging import profiler_config as build

    return build("s3://bench/profiler")._to_request_dict()


def run_once(slice_dir: Path, work: Path, mode: str) -> dict:
    """mode: "off"; "sampler" (system sampler only); "full" (sampler + step timing + torch.profiler window)."""
    profiled = mode != "off"
    from mlops.local.instrument import JobInstruments

    env = {**os.environ, "SM_CHANNEL_TRAIN": str(slice_dir / "train"), "SM_CHANNEL_VALIDATION":
           str(slice_dir / "validation"), "SM_MODEL_DIR": str(work / "model"), "SM_OUTPUT_DIR": str(work / "output"),
           "SM_OUTPUT_DATA_DIR": str(work / "output" / "data"), "SM_NUM_CPUS": "1", "OMP_NUM_THREADS": "1"}
    instruments = None
    if profiled:
        instruments = JobInstruments({"ProfilerConfig": profiler_config()}, "bench-job", work)
        if mode == "full":
            env.update(instruments.environment())
    load = os.getloadavg()
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, str(ROOT / "training" / "train_cnn.py"), *TRAIN_ARGS], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if instruments is not None:
        instruments.started(process.pid)
    code = process.wait()
    wall = time.perf_counter() - began
    row = {"mode": mode, "profiled": profiled, "wall_s": round(wall, 3), "exit_code": code, "loadavg": load}
    if instruments is not None:
        samples = instruments.sampler.stop() if instruments.sampler else []
        row.update(samples=len(samples), sampling_s=round(instruments.sampler.sample_seconds, 4),
                   sampling_share=round(instruments.sampler.sample_seconds / wall, 5))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-profiler-") as tmp:
        slice_dir = Path(tmp) / "slice"
        subprocess.run([sys.executable, str(ROOT / "training" / "preprocess.py"), "--input-dir",
                        str(ROOT / "data" / "mnist"), "--output-dir", str(slice_dir), "--max-train-samples", "4000",
                        "--max-test-samples", "100"], check=True, capture_output=True)
        rows = []
        modes = ["off", "sampler", "full"]
        for repeat in range(options.repeats):
            for mode in modes if repeat % 2 == 0 else reversed(modes):
                rows.append(run_once(slice_dir, Path(tmp) / f"run-{repeat}-{mode}", mode))

    def median_wall(mode: str) -> float:
        return statistics.median(r["wall_s"] for r in rows if r["mode"] == mode)

    plain = median_wall("off")
    profiled_rows = [r for r in rows if r["profiled"]]
    sampling = max(r["sampling_share"] for r in profiled_rows)
    report = {"benchmark": "profiler cost on a CNN training job (2 epochs, 3,600 images, 1 core)",
              "target_share": 0.03, "sampling_share_worst": sampling, "meets_target": sampling < 0.03,
              "median_wall_s": {mode: median_wall(mode) for mode in ("off", "sampler", "full")},
              "wall_overhead_share_sampler": round(median_wall("sampler") / plain - 1, 4),
              "wall_overhead_share_full": round(median_wall("full") / plain - 1, 4), "runs": rows,
              "note": "sampler = the 500 ms system monitor alone; full adds per-step timing and the 10-step "
                      "torch.profiler window with its trace export (a fixed ~1 s here). On a shared machine the "
                      "wall-time noise is of the same order as the figures (see loadavg per run).",
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
