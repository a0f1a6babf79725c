"""SageMaker Profiler, locally: system metrics of a job's process tree and a per-job profiler report.

:class:`SystemSampler` samples CPU, memory and disk I/O of the job's process and its children every
ProfilingIntervalInMilliseconds (SageMaker's system monitor, 500 ms here) on a daemon thread.
:func:`write_report` renders one self-contained HTML page per training job from those samples and what the
training script wrote under the profiler's framework folder (``step_times.json``: data vs compute time of
every step; ``torch_profile.json``: the torch.profiler window's top operators): utilisation over time, the
step-time distribution, the data-loading vs compute share, and plain-language findings, among them one when
the data loader is the bottleneck.
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from mlops.local.figures import figure_uri, pyplot
from mlops.local.figures import render as render_template
from training.atomic import atomic_write_text

DATA_BOTTLENECK_SHARE = 0.25  # SageMaker's report flags steps that wait on data for a large share of their time
LOW_CPU_SHARE = 0.5


class SystemSampler:
    """Samples the process tree rooted at ``pid``; ``start`` after the process exists, ``stop`` when it ends."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"ProfilingIntervalInMilliseconds must be > 0, got {interval_s * 1000:.0f}")
        self.interval_s = interval_s
        self.samples: list[dict[str, float]] = []
        self.sample_seconds = 0.0  # time spent sampling (the sampler's own cost)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._processes: dict[int, psutil.Process] = {}

    def start(self, pid: int) -> None:
        try:
            self._root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        self._thread = threading.Thread(target=self._run, name=f"profiler-{pid}", daemon=True)
        self._thread.start()

    def stop(self) -> list[dict[str, float]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.samples

    def _run(self) -> None:
        psutil.cpu_percent(None)
        while not self._stop.wait(self.interval_s):
            began = time.perf_counter()
            sample = self.sample()
            self.sample_seconds += time.perf_counter() - began
            if sample is None:
                return
            self.samples.append(sample)

    def sample(self) -> dict[str, float] | None:
        try:
            tree = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        cpu = rss = read = write = 0.0
        threads = 0
        for process in tree:
            known = self._processes.setdefault(process.pid, process)
            try:
                with known.oneshot():
                    cpu += known.cpu_percent(None)
                    rss += known.memory_info().rss
                    threads += known.num_threads()
                    try:
                        io = known.io_counters()
                        read += io.read_bytes
                        write += io.write_bytes
                    except (psutil.AccessDenied, AttributeError):
                        pass
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return {"time": time.time(), "cpu_percent": round(cpu, 1), "system_cpu_percent": psutil.cpu_percent(None),
                "rss_mb": round(rss / 2**20, 1), "read_bytes": read, "write_bytes": write, "threads": threads}


# --- the report ------------------------------------------------------------------------------------------------


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def step_statistics(step_times: dict[str, Any] | None) -> dict[str, float] | None:
    steps = (step_times or {}).get("steps") or []
    if len(steps) < 2:
        return None
    data = [float(s[2]) for s in steps]
    compute = [float(s[3]) for s in steps]
    totals = [d + c for d, c in zip(data, compute, strict=True)]
    total = sum(totals) or 1e-12
    return {"steps": len(steps), "median_step_s": statistics.median(totals),
            "p95_step_s": sorted(totals)[int(0.95 * (len(totals) - 1))], "data_share": sum(data) / total,
            "compute_share": sum(compute) / total}


def findings(stats: dict[str, float] | None, samples: list[dict[str, float]], cpus: int) -> list[str]:
    """Plain-language conclusions, the way SageMaker's profiler report words its rules."""
    found = []
    if stats and stats["data_share"] >= DATA_BOTTLENECK_SHARE:
        found.append(
            f"The data loader is the bottleneck: {stats['data_share']:.0%} of each training step is spent preparing "
            "the batch (indexing and augmentation) before the forward pass starts, so the model computes only "
            f"{stats['compute_share']:.0%} of the time. Prepare batches ahead (a DataLoader with workers, or "
            "augmentation on more cores), or make the augmentation cheaper.")
    if stats and stats["p95_step_s"] > 3 * stats["median_step_s"]:
        found.append(f"Step times are uneven: the slowest 5% take over {stats['p95_step_s'] * 1000:.0f} ms against a "
                     f"median of {stats['median_step_s'] * 1000:.0f} ms (other load on the machine, or the "
                     "Debugger saving tensors on those steps).")
    if samples:
        busy = statistics.mean(s["cpu_percent"] for s in samples) / (100 * max(cpus, 1))
        if busy < LOW_CPU_SHARE:
            found.append(f"Low CPU utilisation: the job used {busy:.0%} of its {cpus} granted core(s) on average; "
                         "it waits on something other than computation, or it was given more cores than it uses.")
    if not found:
        found.append("No bottleneck found: the steps spend most of their time computing and the cores are busy.")
    return found


def render(job_name: str, samples: list[dict[str, float]], step_times: dict[str, Any] | None,
           torch_profile: dict[str, Any] | None, cpus: int, interval_ms: int) -> str:
    plt = pyplot()
    stats = step_statistics(step_times)
    utilisation = steps_figure = None
    if samples:
        origin = samples[0]["time"]
        times = [s["time"] - origin for s in samples]
        figure, axes = plt.subplots(1, 3, figsize=(13, 3.2))
        axes[0].plot(times, [s["cpu_percent"] for s in samples], label="job (% of one core)")
        axes[0].plot(times, [s["system_cpu_percent"] * psutil.cpu_count() for s in samples], alpha=0.6,
                     label="whole machine")
        axes[0].set_title("CPU")
        axes[0].legend(fontsize=8)
        axes[1].plot(times, [s["rss_mb"] for s in samples], color="tab:purple")
        axes[1].set_title("memory (RSS, MiB)")
        for key, label in (("read_bytes", "read"), ("write_bytes", "write")):
            rates = [0.0] + [max(0.0, (b[key] - a[key]) / max(b["time"] - a["time"], 1e-6) / 2**20)
                             for a, b in itertools.pairwise(samples)]
            axes[2].plot(times, rates, label=label)
        axes[2].set_title("disk I/O (MiB/s)")
        axes[2].legend(fontsize=8)
        for axis in axes:
            axis.set_xlabel("seconds")
            axis.grid(alpha=0.3)
        utilisation = figure_uri(figure)
    if stats:
        totals = [(s[2] + s[3]) * 1000 for s in step_times["steps"]]
        figure, axes = plt.subplots(1, 2, figsize=(11, 3.2))
        axes[0].hist(totals, bins=min(40, max(5, len(totals) // 5)), color="tab:blue")
        axes[0].set_xlabel("step time (ms)")
        axes[0].set_title(f"step-time distribution ({stats['steps']} steps)")
        axes[1].bar(["data preparation", "compute"], [stats["data_share"], stats["compute_share"]],
                    color=["tab:orange", "tab:green"])
        axes[1].set_ylim(0, 1)
        axes[1].set_title("share of step time")
        for axis in axes:
            axis.grid(alpha=0.3)
        steps_figure = figure_uri(figure)
    return render_template("profiler.html", job_name=job_name, samples=len(samples), cpus=cpus,
                           interval_ms=interval_ms, findings=findings(stats, samples, cpus), stats=stats,
                           utilisation=utilisation, steps_figure=steps_figure, torch_profile=torch_profile)


def write_report(path: Path, job_name: str, samples: list[dict[str, float]], framework_dir: Path, cpus: int,
                 interval_ms: int) -> Path:
    text = render(job_name, samples, load_json(framework_dir / "step_times.json"),
                  load_json(framework_dir / "torch_profile.json"), cpus, interval_ms)
    atomic_write_text(path, text)
    return path
