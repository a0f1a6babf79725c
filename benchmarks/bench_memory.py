"""RSS of the endpoint's processes through minutes of mixed load: good requests in every form and the whole
bad-request corpus, interleaved, from several clients at once (issue 12: < 10% growth over 10 minutes).

The baseline is taken after ``--warmup`` seconds (allocator arenas, TorchScript's first calls and the image
decoders settle in the first minute); growth is the last sample over that baseline, per worker. A plot of RSS
over time goes next to the JSON.

    .venv/bin/python benchmarks/bench_memory.py [--duration 600] [--clients 4] [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_GROWTH = 0.10


def request_mix(seed: int = 0) -> list[tuple[str, bytes, str | None, int]]:
    """(name, body, content type, expected status): each real digit in every form, plus every bad request."""
    import io

    import numpy as np

    from tests.helpers.bad_requests import BAD_INPUTS
    from tests.helpers.images import digit_forms
    from tests.helpers.models import load_mnist

    images, _ = load_mnist("test", 8)
    good = []
    for index, digit in enumerate(images):
        for form, (body, content_type) in digit_forms(digit).items():
            good.append((f"{form} #{index}", body, content_type, 200))
        good.append((f"json #{index}", json.dumps(digit.tolist()).encode(), "application/json", 200))
        buffer = io.BytesIO()
        np.save(buffer, digit)
        good.append((f"npy #{index}", buffer.getvalue(), "application/x-npy", 200))
        good.append((f"csv #{index}", ",".join(map(str, digit.ravel())).encode(), "text/csv", 200))
    mix = good * 3 + list(BAD_INPUTS)  # mostly good traffic, every bad request in each cycle
    random.Random(seed).shuffle(mix)
    return mix


def client(port: int, mix: list, stop: threading.Event, counts: Counter, wrong: Counter, offset: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for name, body, content_type, expected in itertools.islice(itertools.cycle(mix), offset, None):
        if stop.is_set():
            break
        try:
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type} if content_type
                         else {})
            response = conn.getresponse()
            response.read()
            status = response.status
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException):
            status = -1  # the server cut a huge upload off: reconnect
            conn.close()
        counts[status] += 1
        if status != expected and not (status == -1 and expected == 413):
            wrong[f"{name}: {status} (expected {expected})"] += 1
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    args = parser.parse_args(argv)

    import psutil

    from tests.helpers.models import write_cnn_model_dir
    from tests.helpers.serving import serving

    mix = request_mix()
    counts: Counter = Counter()
    wrong: Counter = Counter()
    samples: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp, \
            serving(write_cnn_model_dir(Path(tmp) / "model"), "--workers", str(args.workers)) as (port, process):
        workers = psutil.Process(process.pid).children()
        stop = threading.Event()
        threads = [threading.Thread(target=client, args=(port, mix, stop, counts, wrong, i * len(mix) // args.clients),
                                    daemon=True) for i in range(args.clients)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        while (elapsed := time.monotonic() - start) < args.duration:
            samples.append({"t": round(elapsed, 1), "requests": sum(counts.values()),
                            "rss_mib": {str(w.pid): round(w.memory_info().rss / 2**20, 2) for w in workers}})
            print(f"{elapsed:5.0f} s  {samples[-1]['requests']:8d} requests  RSS MiB {samples[-1]['rss_mib']}",
                  flush=True)
            time.sleep(args.interval)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        samples.append({"t": round(time.monotonic() - start, 1), "requests": sum(counts.values()),
                        "rss_mib": {str(w.pid): round(w.memory_info().rss / 2**20, 2) for w in workers}})
        alive = process.poll() is None and all(w.is_running() for w in workers)

    baseline = next(s for s in samples if s["t"] >= args.warmup)
    growth = {pid: round(samples[-1]["rss_mib"][pid] / baseline["rss_mib"][pid] - 1, 4) for pid in baseline["rss_mib"]}
    result = {
        "benchmark": "endpoint RSS through mixed load (every good form + the bad-request corpus)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "load1_end": os.getloadavg()[0]},
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "clients": args.clients,
                     "workers": args.workers, "mix": {"requests": len(mix), "bad": sum(1 for m in mix if m[3] != 200)}},
        "requests": sum(counts.values()), "status_counts": {str(k): v for k, v in sorted(counts.items())},
        "unexpected": dict(wrong.most_common(20)), "workers_alive": alive,
        "baseline_mib": baseline["rss_mib"], "final_mib": samples[-1]["rss_mib"], "growth": growth,
        "target_growth": TARGET_GROWTH,
        "met": alive and not wrong and all(g < TARGET_GROWTH for g in growth.values()),
        "samples": samples,
    }
    from training.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    plot(samples, args.warmup, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    return 0 if result["met"] else 1


def plot(samples: list[dict], warmup: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for pid in samples[0]["rss_mib"]:
        axis.plot([s["t"] for s in samples], [s["rss_mib"][pid] for s in samples], label=f"worker {pid}")
    axis.axvline(warmup, color="grey", linestyle=":", label="baseline")
    axis.set_xlabel("seconds of mixed load")
    axis.set_ylabel("RSS (MiB)")
    axis.set_ylim(bottom=0)
    axis.legend()
    axis.set_title("Endpoint worker RSS under good + bad requests")
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
