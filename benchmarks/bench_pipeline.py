"""Benchmark: the README's main command from fresh clones, timed (issue 13's targets).

Each round clones this repository (its committed HEAD) into a temporary folder with ../shared beside it, runs
``make run`` there (bootstrap + the local pipeline on full MNIST; the venv is reused from this checkout so
the round times the pipeline, not pip), then runs ``mlops run`` again with nothing changed (the cached
rerun). Per round it records wall time, 1-minute load averages before and after, each step's start and
duration, the test accuracies of the CNN and the XGBoost baseline, and every Debugger rule status.

Run: ``.venv/bin/python benchmarks/bench_pipeline.py [--rounds 2] [--wait-load 0.5]``.
Writes benchmarks/results/pipeline.json (medians over the rounds, and every round) and pipeline.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGETS = {"pipeline_seconds": 360.0, "cnn_accuracy": 0.995, "xgboost_accuracy": 0.979, "rerun_seconds": 6.0,
           "rule_alarms": 0}


def load1() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(limit: float, timeout_s: float) -> float:
    """Wait (up to timeout_s) until the 1-minute load average is under ``limit``; returns it."""
    deadline = time.time() + timeout_s
    while load1() > limit and time.time() < deadline:
        time.sleep(5)
    return load1()


def execution_summary(home: Path, execution_id: str, accuracies: bool = True) -> dict:
    """Steps, accuracies and rule statuses of one execution, read from its local records (a rerun's
    evaluations are cache hits: their reports stay under the first execution, so ``accuracies=False``)."""
    code = f"""
import json, os
from mlops import store
from mlops.local import records
steps = records.list_steps({execution_id!r})
start = min(s.start_time for s in steps if s.start_time)
out = {{"steps": [], "rules": {{}}}}
for s in steps:
    out["steps"].append({{"name": s.step_name, "status": s.status, "cached": bool(s.cache_source),
                         "start_s": round((s.start_time or start) - start, 1),
                         "seconds": round((s.end_time or 0) - (s.start_time or 0), 1)}})
    for rule in (s.properties or {{}}).get("DebugRuleEvaluationStatuses") or []:
        out["rules"][rule["RuleConfigurationName"]] = rule["RuleEvaluationStatus"]
for step, key in (("Evaluate", "cnn_accuracy"), ("EvaluateBaseline", "xgboost_accuracy")) if {accuracies!r} else ():
    uri = f"s3://mlops-local/image-classification/{execution_id}/{{step}}/output/evaluation/evaluation.json"
    report = json.loads(store.read_bytes(uri))
    out[key] = report["multiclass_classification_metrics"]["accuracy"]["value"]
print(json.dumps(out))
"""
    env = dict(os.environ, MLOPS_HOME=str(home))
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-c", code], env=env, capture_output=True,
                            text=True, check=True, cwd=ROOT)
    return json.loads(result.stdout)


def last_execution_id(log: str) -> str:
    for line in reversed(log.splitlines()):
        if line.startswith("execution ") and ": " in line:
            return line.split()[1].rstrip(":")
    raise RuntimeError("no 'execution <id>: <status>' line in the run's output:\n" + log[-2000:])


def one_round(index: int, wait_load: float) -> dict:
    base = Path(tempfile.mkdtemp(prefix=f"bench-pipeline-{index}-"))
    clone = base / "main"
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        shared = ROOT.parent / "shared"
        if shared.exists():
            os.symlink(shared, base / "shared")
        os.symlink(ROOT / ".venv", clone / ".venv")  # the round times the pipeline; installs are bootstrap's
        load_before = wait_for_quiet(wait_load, 180)
        started = time.perf_counter()
        run = subprocess.run(["make", "run"], cwd=clone, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        load_after = load1()
        if run.returncode != 0:
            raise RuntimeError(f"make run failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        execution = last_execution_id(run.stdout)
        summary = execution_summary(clone / ".mlops", execution)
        print(f"round {index}: make run {seconds:.0f} s (load {load_before:.2f} -> {load_after:.2f}), CNN "
              f"{summary['cnn_accuracy']:.4f}, XGBoost {summary['xgboost_accuracy']:.4f}, rules {summary['rules']}",
              flush=True)
        started = time.perf_counter()
        rerun = subprocess.run([str(clone / ".venv" / "bin" / "mlops"), "run"], cwd=clone, capture_output=True,
                               text=True, check=False)
        rerun_seconds = time.perf_counter() - started
        if rerun.returncode != 0:
            raise RuntimeError(f"the rerun failed:\n{rerun.stdout[-3000:]}\n{rerun.stderr[-3000:]}")
        rerun_summary = execution_summary(clone / ".mlops", last_execution_id(rerun.stdout), accuracies=False)
        alarms = sorted(name for name, status in summary["rules"].items() if status == "IssuesFound")
        result = {"round": index, "make_run_seconds": round(seconds, 1), "load1_before": round(load_before, 2),
                  "load1_after": round(load_after, 2), "execution": execution, **summary,
                  "rule_alarms": alarms, "rerun_seconds": round(rerun_seconds, 2),
                  "rerun_cached_steps": sum(s["cached"] for s in rerun_summary["steps"])}
        print(f"round {index}: alarms {alarms or 'none'}, rerun {rerun_seconds:.1f} s "
              f"({result['rerun_cached_steps']} steps from cache)", flush=True)
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


def plot(rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rounds), 1, figsize=(10, 2.6 * len(rounds)), squeeze=False)
    for ax, result in zip(axes[:, 0], rounds, strict=True):
        steps = [s for s in result["steps"] if s["seconds"] > 0.5]
        for row, step in enumerate(steps):
            ax.barh(row, step["seconds"], left=step["start_s"], color="tab:blue")
            ax.text(step["start_s"] + step["seconds"] + 2, row, f"{step['seconds']:.0f} s", va="center", fontsize=8)
        ax.set_yticks(range(len(steps)), [s["name"] for s in steps], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(TARGETS["pipeline_seconds"], color="tab:red", linestyle="--", linewidth=1)
        ax.set_title(f"round {result['round']}: make run {result['make_run_seconds']:.0f} s, "
                     f"load {result['load1_before']:.2f}", fontsize=9)
    axes[-1, 0].set_xlabel("seconds since the execution started (red: the 6-minute target)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wait-load", type=float, default=0.5, help="start a round under this 1-minute load")
    args = parser.parse_args()
    rounds = [one_round(i, args.wait_load) for i in range(1, args.rounds + 1)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    medians = {"make_run_seconds": median("make_run_seconds"), "cnn_accuracy": median("cnn_accuracy"),
               "xgboost_accuracy": median("xgboost_accuracy"), "rerun_seconds": median("rerun_seconds"),
               "rule_alarms": max(len(r["rule_alarms"]) for r in rounds)}
    met = {"pipeline_seconds": medians["make_run_seconds"] <= TARGETS["pipeline_seconds"],
           "cnn_accuracy": medians["cnn_accuracy"] >= TARGETS["cnn_accuracy"],
           "xgboost_accuracy": medians["xgboost_accuracy"] >= TARGETS["xgboost_accuracy"],
           "rerun_seconds": medians["rerun_seconds"] <= TARGETS["rerun_seconds"],
           "rule_alarms": medians["rule_alarms"] == TARGETS["rule_alarms"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "targets": TARGETS, "medians": medians, "met": met,
           "rounds": rounds}
    (RESULTS / "pipeline.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(rounds, RESULTS / "pipeline.png")
    print(json.dumps({"medians": medians, "met": met}, indent=1))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
