"""Benchmark: dynamic batching on vs off on the local endpoint (same CNN, same 28x28 PNG, same sitting).

Servers with ``--max-batch 1`` (off) and ``--max-batch 32`` (on, max delay 0) alternate over ``--rounds``;
each round measures concurrency 1 (latency: median and p99) and concurrency 8 (req/s) with a keep-alive
http.client load generator in threads. The client shares the machine's cores, so absolute figures are low;
the comparison is what counts (c=1 must not suffer). The 1-minute load average is recorded per run.

Run: ``.venv/bin/python benchmarks/bench_batching.py [--rounds 2] [--seconds 5]``. Writes
benchmarks/results/batching.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "batching.json"


def load(port: int, body: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.perf_counter() < stop:
            began = time.perf_counter()
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/png"})
            response = conn.getresponse()
            response.read()
            assert response.status == 200
            mine.append(time.perf_counter() - began)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    return {"requests": len(latencies), "req_per_s": round(len(latencies) / seconds, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 3),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 3)}


def run_server(model_dir: Path, max_batch: int, seconds: float, body: bytes) -> dict:
    from tests.helpers.serving import serving

    with serving(model_dir, "--workers", "2", "--max-batch", str(max_batch)) as (port, _):
        load(port, body, 1, 1.0)  # warm-up
        row = {"max_batch": max_batch, "loadavg": os.getloadavg()[0]}
        row["c1"] = load(port, body, 1, seconds)
        row["c8"] = load(port, body, 8, seconds)
        return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    from tests.helpers.models import digit_png, load_mnist, trained_cnn, write_cnn_model_dir

    body = digit_png(load_mnist("test", 1)[0][0])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        state, config = trained_cnn()
        model_dir = write_cnn_model_dir(Path(tmp) / "model", state, config)
        for round_index in range(args.rounds):
            order = (1, 32) if round_index % 2 == 0 else (32, 1)
            for max_batch in order:
                row = run_server(model_dir, max_batch, args.seconds, body)
                row["round"] = round_index
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = {}
    for max_batch in (1, 32):
        mine = [r for r in rows if r["max_batch"] == max_batch]
        summary[f"max_batch={max_batch}"] = {
            "c1_p50_ms": statistics.median(r["c1"]["p50_ms"] for r in mine),
            "c1_p99_ms": statistics.median(r["c1"]["p99_ms"] for r in mine),
            "c8_req_per_s": statistics.median(r["c8"]["req_per_s"] for r in mine)}
    result = {"benchmark": "dynamic batching off (max_batch=1) vs on (max_batch=32, delay 0), 2 workers, "
                           "python keep-alive client on the same cores", "summary": summary, "runs": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
