"""Benchmark the local endpoint against SageMaker's own PyTorch serving stack, in the same sitting.

Both servers serve the SAME model.tar.gz (``--model-tar``, e.g. a registered model; by default a compact CNN
trained here on 3,000 real MNIST digits) and get the same request, a real 28x28 MNIST test digit as PNG, from the
same bounded load test (../shared/peer-endpoint/loadtest.py, hey by default), one server at a time, alternating
order over ``--rounds`` rounds; the summary is the median per server and concurrency. The peer is TorchServe + the
SageMaker PyTorch inference toolkit started as its container does (start_peer.sh, this venv, the archive's own
code/inference.py), in its best measured configuration (2 workers, OMP_NUM_THREADS=1). Ours is
``python -m mlops.serve.server`` on the extracted archive.

The machine's 2 cores are shared with the load generator (and possibly other work): the 1-minute load
average is recorded before every run, and the script waits (bounded) for it to fall under ``--max-load``.

    .venv/bin/python benchmarks/bench_endpoint.py [--model-tar T] [--rounds 2] [-d 10] [--out F]

Targets (issue 12): >= 3x the peer's req/s at c=8 and at c=32, and p99 <= 2 ms at c=1. ``--skip-peer``
measures ours alone. Needs Java 17 and hey (apt-get install -y hey).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PEER_SRC = (ROOT.parent / "shared" / "peer-endpoint").resolve()
TARGET_RATIO = 3.0  # ours / peer req/s, at each of RATIO_AT
RATIO_AT = ("8", "32")
TARGET_P99_MS = 2.0  # ours at c=1


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(max_load: float, wait_s: float) -> float:
    """Wait (bounded) until the 1-minute load average is under ``max_load``; returns the last reading."""
    deadline = time.monotonic() + wait_s
    load = load1()
    while load > max_load and time.monotonic() < deadline:
        print(f"load {load} > {max_load}: waiting", flush=True)
        time.sleep(15)
        load = load1()
    return load


class OurServer:
    name = "mlops (falcon ASGI on uvicorn workers)"

    def __init__(self, model_dir: Path, workers: int, threads: int) -> None:
        self.model_dir, self.workers, self.threads = model_dir, workers, threads
        self.context = None

    def start(self) -> int:
        """Start on a port of its own choosing (the shared test helper picks it); returns that port."""
        from tests.helpers.serving import serving

        self.context = serving(self.model_dir, "--workers", str(self.workers), "--threads", str(self.threads))
        started_port, _ = self.context.__enter__()
        return started_port

    def stop(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None


class PeerServer:
    name = "SageMaker PyTorch serving (TorchServe + inference toolkit)"

    def __init__(self, work: Path, model_tar: Path, workers: int, omp_threads: int | None) -> None:
        self.work, self.model_tar, self.workers, self.omp = work, model_tar, workers, omp_threads
        self.context = None

    def start(self) -> int:
        from tests.helpers.serving import peer_serving

        self.context = peer_serving(self.model_tar, self.work, self.workers, self.omp)
        return self.context.__enter__()

    def stop(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None


def run_loadtest(port: int, png: Path, args: argparse.Namespace, label: str) -> list[dict]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, str(PEER_SRC / "loadtest.py"), f"http://127.0.0.1:{port}/invocations", str(png),
                   "-c", args.concurrency, "-d", str(args.duration), "--warmup", str(args.warmup),
                   "--tool", args.tool, "--json-out", out.name, "--label", label]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        print(result.stdout, end="", flush=True)
        if result.returncode != 0:
            raise RuntimeError(f"loadtest failed: {result.stderr[-2000:]}")
        return json.loads(Path(out.name).read_text())


def summarise(runs: list[dict]) -> dict:
    by_server: dict[str, dict[int, list[dict]]] = {}
    for run in runs:
        for point in run["points"]:
            by_server.setdefault(run["server"], {}).setdefault(point["concurrency"], []).append(point)
    summary = {}
    for server, points in by_server.items():
        summary[server] = {
            str(c): {key: round(statistics.median(p[key] for p in pts), 2) for key in ("rps", "p50_ms", "p99_ms")}
            | {"runs": len(pts), "errors": sum(sum(p["errors"].values()) + p["wrong_body"] for p in pts)}
            for c, pts in sorted(points.items())
        }
    return summary


def build_model_tar(folder: Path) -> Path:
    """The compact CNN at the training defaults, trained briefly on real digits, packaged as training writes it."""
    from tests.helpers.models import package_model, trained_cnn, write_cnn_model_dir

    state, config = trained_cnn()
    return package_model(write_cnn_model_dir(folder / "dir", state, config), folder / "model.tar.gz")


def write_digit_png(path: Path) -> Path:
    """A real MNIST test digit, 28x28 grayscale PNG, the request both servers get."""
    from tests.helpers.models import digit_png, load_mnist

    images, _ = load_mnist("test", 1)
    path.write_bytes(digit_png(images[0]))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-tar", type=Path, help="a model.tar.gz (default: a compact CNN trained here)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-c", "--concurrency", default="1,8,32")
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tool", choices=["hey", "python"], default="hey")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (ours)")
    parser.add_argument("--peer-workers", type=int, default=2)
    parser.add_argument("--peer-omp", type=int, default=1, help="OMP_NUM_THREADS for the peer (0: unset)")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--wait-load", type=float, default=300, help="seconds to wait for a quiet machine")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "endpoint.json")
    args = parser.parse_args(argv)

    from mlops.serve.deploy import extract_model

    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        tmp_path = Path(tmp)
        model_tar = (args.model_tar or build_model_tar(tmp_path / "model")).resolve()
        model_dir = extract_model(model_tar, tmp_path / "ours")
        png = write_digit_png(tmp_path / "digit.png")
        config = json.loads((model_dir / "model_config.json").read_text())
        servers = [OurServer(model_dir, args.workers, args.threads)]
        if not args.skip_peer:
            servers.append(PeerServer(tmp_path / "peer", model_tar, args.peer_workers, args.peer_omp or None))
        runs = []
        for round_no in range(args.rounds):
            order = servers if round_no % 2 == 0 else list(reversed(servers))
            for server in order:
                load_before = wait_for_quiet(args.max_load, args.wait_load)
                port = server.start()
                print(f"round {round_no + 1}: {server.name} on :{port}, load {load_before}", flush=True)
                try:
                    points = run_loadtest(port, png, args, server.name)
                finally:
                    server.stop()
                runs.append({"round": round_no + 1, "server": server.name, "load1_before": load_before,
                             "load1_after": load1(), "points": points})
        png_bytes = png.stat().st_size

    summary = summarise(runs)
    ours = summary[servers[0].name]
    result = {
        "benchmark": f"local endpoint vs SageMaker PyTorch serving stack, same model.tar.gz, one real 28x28 MNIST "
                     f"PNG ({png_bytes} bytes)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "load generator on the same cores as the server; load1 = 1-minute load average"},
        "settings": {"rounds": args.rounds, "concurrency": args.concurrency, "duration_s": args.duration,
                     "warmup_s": args.warmup, "tool": args.tool, "model_tar": str(args.model_tar or "built here"),
                     "model": {k: config.get(k) for k in ("framework", "architecture", "width", "kernel_size")},
                     "ours": {"workers": args.workers, "torch_threads": args.threads},
                     "peer": None if args.skip_peer else {"workers": args.peer_workers,
                                                          "OMP_NUM_THREADS": args.peer_omp or None}},
        "summary_median": summary,
        "runs": runs,
    }
    p99 = ours.get("1", {}).get("p99_ms")
    targets = {"ours_c1_p99_ms": p99, "target_c1_p99_ms": TARGET_P99_MS,
               "c1_p99_met": p99 is not None and p99 <= TARGET_P99_MS}
    if not args.skip_peer:
        peer = summary[servers[1].name]
        ratios = {c: round(ours[c]["rps"] / peer[c]["rps"], 2) for c in RATIO_AT if c in ours and c in peer}
        targets |= {"ratio_by_concurrency": ratios, "target_ratio": TARGET_RATIO,
                    "ratio_met": len(ratios) == len(RATIO_AT) and all(r >= TARGET_RATIO for r in ratios.values())}
    result["targets"] = targets
    from training.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps({"summary_median": summary, "targets": targets}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
