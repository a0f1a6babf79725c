"""Benchmark: fuzz every content type's input_fn with 100,000+ generated bodies, then a sample over HTTP.

The bodies come from the same hypothesis strategies as tests/inference/test_fuzz.py (tests/helpers/fuzz.py):
well-formed, mutated and random bodies per content type. Every outcome is counted: "ok" (pixels returned),
a 4xx status (InferenceError), or any other exception (a bug: counted with its type and one example).
Then ``--http`` bodies per type are posted to a running local endpoint (2 workers, the XGBoost baseline):
the statuses are counted and any 5xx is a failure.

Run: ``.venv/bin/python benchmarks/bench_fuzz.py [--per-type 14000] [--http 150]``.
Writes benchmarks/results/fuzz.json; exits 1 if any unexpected exception or 5xx was seen.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "fuzz.json"


def fuzz_type(content_type: str, count: int, keep: int) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings

    from tests.helpers.fuzz import BODIES, check

    outcomes: collections.Counter[str] = collections.Counter()
    errors: dict[str, str] = {}
    sample: list[bytes] = []

    @settings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(BODIES[content_type])
    def run(body: bytes) -> None:
        if len(sample) < keep:
            sample.append(body)
        try:
            outcomes[check(body, content_type)] += 1
        except Exception as exc:  # noqa: BLE001 - counted, not raised: the benchmark reports every failure
            name = f"{type(exc).__name__}"
            outcomes[f"unexpected {name}"] += 1
            errors.setdefault(name, f"{exc!s:.200} body[:80]={body[:80]!r}")

    began = time.perf_counter()
    run()
    seconds = time.perf_counter() - began
    total = sum(outcomes.values())
    return {"content_type": content_type, "inputs": total, "seconds": round(seconds, 2),
            "inputs_per_s": round(total / seconds, 1), "outcomes": dict(outcomes.most_common()),
            "unexpected": errors, "sample": sample}


def post(port: int, body: bytes, content_type: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def over_http(samples: dict[str, list[bytes]]) -> dict:
    from tests.helpers.models import write_xgboost_model_dir
    from tests.helpers.serving import serving

    with tempfile.TemporaryDirectory() as tmp, serving(write_xgboost_model_dir(Path(tmp) / "model"),
                                                       "--workers", "2") as (port, _):
        statuses: dict[str, dict[int, int]] = {}
        began = time.perf_counter()
        for content_type, bodies in samples.items():
            counts: collections.Counter[int] = collections.Counter(post(port, b, content_type) for b in bodies)
            statuses[content_type] = dict(sorted(counts.items()))
        seconds = time.perf_counter() - began
    total = sum(sum(c.values()) for c in statuses.values())
    server_errors = sum(n for c in statuses.values() for s, n in c.items() if s >= 500)
    return {"requests": total, "seconds": round(seconds, 2), "status_5xx": server_errors, "statuses": statuses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-type", type=int, default=14_000, help="generated bodies per content type")
    parser.add_argument("--http", type=int, default=150, help="of those, bodies per type sent over HTTP")
    args = parser.parse_args()
    from tests.helpers.fuzz import BODIES

    rows = []
    for content_type in BODIES:
        row = fuzz_type(content_type, args.per_type, args.http)
        print(f"{content_type:18s} {row['inputs']:7d} inputs {row['seconds']:7.1f} s {row['outcomes']}", flush=True)
        rows.append(row)
    http_result = over_http({row["content_type"]: row.pop("sample") for row in rows})
    print(f"HTTP: {http_result['requests']} requests, {http_result['status_5xx']} 5xx, {http_result['statuses']}")
    result = {
        "benchmark": "fuzzing input_fn per content type (hypothesis), then a sample over HTTP",
        "inputs_total": sum(r["inputs"] for r in rows),
        "seconds_total": round(sum(r["seconds"] for r in rows), 1),
        "unexpected_total": sum(n for r in rows for k, n in r["outcomes"].items() if k.startswith("unexpected")),
        "loadavg": os.getloadavg(),
        "per_type": rows,
        "http": http_result,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['inputs_total']} inputs in {result['seconds_total']} s, {result['unexpected_total']} unexpected; "
          f"wrote {RESULTS}")
    if result["unexpected_total"] or http_result["status_5xx"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
