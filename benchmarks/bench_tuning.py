"""Benchmark: the local tuner's overhead per trial, training excluded (target < 1 s).

``mlops run`` of the real definition on a small MNIST slice with TuningMaxParallelJobs=1, for each
strategy (Bayesian and Random through the TuningStrategy parameter, Hyperband through
MLOPS_TUNING_STRATEGY). Per trial overhead = (TuneCNN step wall time - sum over trials of the training
process's own run time and of its wait for a free core) / trials. It therefore counts everything the tuner
and the executor do around the training processes: the strategy's suggest/observe (optuna), code and
channel downloads, model packing, SQLite records, the trials table and plot.
The machine is shared: ``os.getloadavg()`` is recorded before and after each run.

Run: ``.venv/bin/python benchmarks/bench_tuning.py``. Writes benchmarks/results/tuning.json.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "tuning.json"
SLICE = ["--param", "MaxTrainSamples=2000", "--param", "MaxTestSamples=300", "--param", "CnnEpochs=1",
         "--param", "XGBoostNumRound=10", "--param", "TuningMaxJobs=4", "--param", "TuningMaxParallelJobs=1",
         "--param", "AccuracyThreshold=0.0"]


def measure(strategy: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tuning-") as home:
        env = {**os.environ, "MLOPS_HOME": home, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
        params = list(SLICE)
        if strategy == "Hyperband":
            env["MLOPS_TUNING_STRATEGY"] = "Hyperband"
        else:
            params += ["--param", f"TuningStrategy={strategy}"]
        load_before = os.getloadavg()
        result = subprocess.run([str(Path(sys.executable).parent / "mlops"), "run", *params], env=env, cwd=ROOT,
                                capture_output=True, text=True, check=False)
        load_after = os.getloadavg()
        os.environ["MLOPS_HOME"] = home
        from mlops.local import records

        executions = records.list_executions()
        if not executions:
            raise SystemExit(f"no execution recorded: {result.stdout[-2000:]}{result.stderr[-2000:]}")
        execution_id = executions[0].execution_id
        step = next(s for s in records.list_steps(execution_id) if s.step_type == "Tuning")
        trials = [j for j in records.list_jobs(execution_id, step.step_name) if j["job_type"] == "Training"]
        process = sum(j["process_seconds"] or 0.0 for j in trials)
        waiting = sum(j["cpu_wait_seconds"] or 0.0 for j in trials)
        # Stopped trials have no process_seconds recorded: count their run time as training too.
        stopped = [j for j in trials if j["process_seconds"] is None and j["start_time"] and j["end_time"]]
        process += sum(j["end_time"] - j["start_time"] for j in stopped)
        wall = step.end_time - step.start_time
        overhead = (wall - process - waiting) / max(1, len(trials))
        return {"strategy": strategy, "trials": len(trials), "statuses": [j["status"] for j in trials],
                "tuning_wall_s": round(wall, 2), "training_process_s": round(process, 2),
                "cpu_wait_s": round(waiting, 2), "overhead_per_trial_s": round(overhead, 3),
                "stopped_trials_counted_by_wall_time": len(stopped),
                "loadavg_before": load_before, "loadavg_after": load_after, "run_exit_code": result.returncode}


def main() -> None:
    rows = [measure(strategy) for strategy in ("Bayesian", "Random", "Hyperband")]
    worst = max(r["overhead_per_trial_s"] for r in rows)
    report = {"benchmark": "tuning overhead per trial, training excluded", "target_s": 1.0,
              "worst_overhead_per_trial_s": worst, "meets_target": worst < 1.0, "runs": rows,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
