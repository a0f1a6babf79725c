"""The local deploy stage's figures: how long a blue/green prod swap takes, how many requests ran through it and
how many failed, and what data capture costs per request at 100% sampling against 0%.

Runs in a throwaway MLOPS_HOME with two versions of a quick CNN (the tests' model), through the real commands'
code (mlops.serve.bluegreen): staging -> smoke test -> gate -> prod v1, then, under steady load from client
threads on keep-alive connections, prod v2. Every request's start, latency, status and answering version is kept.
Capture overhead: the same endpoint redeployed with 0% and 100% sampling, alternated over several rounds of
sequential requests (one client, so the figure is per request, not throughput).

    .venv/bin/python benchmarks/bench_bluegreen.py [--swaps 3] [--clients 4] [--capture-rounds 4 --requests 400]

Writes benchmarks/results/bluegreen.json and bluegreen.png (latency of every request over time, swap phases).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
GROUP = "bench-classifier"


def _sequential_latencies(url: str, body: bytes, count: int) -> list[float]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/png"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        latencies.append(1000 * (time.perf_counter() - start))
    conn.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--capture-rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=400, help="sequential requests per capture round")
    args = parser.parse_args()
    os.environ["MLOPS_HOME"] = tempfile.mkdtemp(prefix="bench-bluegreen-")

    from mlops.registry import LocalRegistry
    from mlops.serve import bluegreen, smoke
    from tests.helpers.models import trained_cnn, write_cnn_model_dir
    from tests.helpers.stages import Load, register_model

    registry = LocalRegistry()
    state_dict, config = trained_cnn()
    model = write_cnn_model_dir(Path(os.environ["MLOPS_HOME"]) / "model", state_dict, config)
    versions = [register_model(model, GROUP, tag=f"v{i}") for i in range(args.swaps + 1)]
    body = smoke.probes((13,), ("upscaled colour",))[0].body

    from mlops.serve.deploy import free_port

    options = bluegreen.Options(port=free_port())
    staging_options = bluegreen.Options(port=free_port())

    def _through_staging(version: int) -> None:
        staging = bluegreen.deploy(registry, GROUP, "staging", version, staging_options)
        result = smoke.run(smoke.HttpTransport(staging["Url"]), 1000, expected_version=str(version))
        registry.record_smoke_test(GROUP, version, "staging", result.passed, result.summary)
        registry.decide_gate(GROUP, "prod", "Approved", "benchmark", version, "bench")

    swaps = []
    try:
        _through_staging(versions[0])
        state = bluegreen.deploy(registry, GROUP, "prod", versions[0], options)
        for version in versions[1:]:
            with Load(state["Url"], body, clients=args.clients) as load:
                _through_staging(version)  # not timed: the swap is prod's
                time.sleep(2.0)
                start = time.monotonic()
                state = bluegreen.deploy(registry, GROUP, "prod", version, options)
                end = time.monotonic()
                time.sleep(2.0)
            during = load.between(start, end)
            swaps.append({"version": version, "seconds": state["LastDeployment"]["Seconds"],
                          "requests_during_swap": len(during),
                          "failed_during_swap": sum(o.status != 200 for o in during),
                          "failed_total": len(load.failures), "requests_total": len(load.outcomes),
                          "p50_ms_during": statistics.median(1000 * o.latency_s for o in during),
                          "p99_ms_during": sorted(1000 * o.latency_s for o in during)[int(0.99 * len(during))],
                          "timeline": [(round(o.start - start, 4), round(1000 * o.latency_s, 3), o.status, o.version)
                                       for o in load.outcomes]})
            print(f"swap to v{version}: {state['LastDeployment']['Seconds']['Total']:.2f} s, {len(during)} requests "
                  f"during it, {swaps[-1]['failed_during_swap']} failed", flush=True)

        capture = {0: [], 100: []}
        for _ in range(args.capture_rounds):
            for percentage in (0, 100):
                bluegreen.stop(state["EndpointName"])
                state = bluegreen.deploy(registry, GROUP, "prod", versions[-1],
                                         bluegreen.Options(port=options.port, sampling_percentage=percentage))
                _sequential_latencies(state["Url"], body, 50)  # warm-up
                capture[percentage] += _sequential_latencies(state["Url"], body, args.requests)
        mean0, mean100 = statistics.fmean(capture[0]), statistics.fmean(capture[100])
        med0, med100 = statistics.median(capture[0]), statistics.median(capture[100])
        print(f"capture: mean {mean0:.3f} ms at 0% vs {mean100:.3f} ms at 100% (+{mean100 - mean0:.3f} ms); "
              f"median {med0:.3f} vs {med100:.3f}", flush=True)
    finally:
        for stage in ("staging", "prod"):
            bluegreen.stop(f"{GROUP}-{stage}")

    load_average = os.getloadavg()
    results = {
        "when": datetime.now(UTC).isoformat(), "load_average": load_average, "cpus": os.cpu_count(),
        "command": "python benchmarks/bench_bluegreen.py " + " ".join(sys.argv[1:]), "clients": args.clients,
        "swaps": [{k: v for k, v in s.items() if k != "timeline"} for s in swaps],
        "capture": {"requests_per_setting": len(capture[0]), "mean_ms_0": mean0, "mean_ms_100": mean100,
                    "median_ms_0": med0, "median_ms_100": med100, "overhead_mean_ms": mean100 - mean0,
                    "overhead_median_ms": med100 - med0},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bluegreen.json").write_text(json.dumps(results, indent=2) + "\n")
    _plot(swaps[0], RESULTS / "bluegreen.png")
    print(f"wrote {RESULTS / 'bluegreen.json'} (load average {load_average[0]:.2f})")


def _plot(swap: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seconds = swap["seconds"]
    fig, ax = plt.subplots(figsize=(10, 4))
    for version in sorted({t[3] for t in swap["timeline"] if t[3]}):
        points = [(t[0], t[1]) for t in swap["timeline"] if t[3] == version]
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=3, label=f"answered by v{version}")
    failed = [(t[0], t[1]) for t in swap["timeline"] if t[2] != 200]
    if failed:
        ax.scatter([p[0] for p in failed], [p[1] for p in failed], s=12, c="red", label="failed")
    marks, at = [], 0.0
    for phase in ("StartAndHealthCheck", "SmokeTest", "Switch", "Drain"):
        at += seconds.get(phase, 0.0)
        marks.append((at, phase))
    for x, phase in marks:
        ax.axvline(x, color="grey", lw=0.8, ls="--")
        ax.text(x, ax.get_ylim()[1] * 0.95, f" {phase} done", rotation=90, va="top", fontsize=7)
    ax.set_xlabel("seconds since the prod deploy started")
    ax.set_ylabel("request latency (ms)")
    ax.set_title(f"blue/green swap under load: {swap['requests_during_swap']} requests during the swap, "
                 f"{swap['failed_during_swap']} failed")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
