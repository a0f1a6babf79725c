"""Benchmark the local endpoint against SageMaker's own PyTorch serving stack, in the same sitting.

Both servers get the same request (the peer's 139-byte 28x28 PNG) from the same bounded load test
(../shared/peer-endpoint/loadtest.py, hey by default), one server at a time, alternating order over
``--rounds`` rounds; the summary is the median per server and concurrency. The peer is TorchServe + the
SageMaker PyTorch inference toolkit started as its container does (start_peer.sh), in its best measured
configuration (2 workers, OMP_NUM_THREADS=1) unless told otherwise. Ours serves this project's real CNN
architecture (``compact`` at the training default width 24, ~16.4k parameters, vs the peer's 5.3k-parameter net) through
inference/inference.py on gunicorn + falcon.

The machine's 2 cores are shared with the load generator (and possibly other work): the 1-minute load
average is recorded before every run, and the script waits (bounded) for it to fall under ``--max-load``.

    .venv/bin/python benchmarks/bench_endpoint.py [--rounds 2] [-d 10] [--out benchmarks/results/endpoint.json]

Needs the peer set up per ../shared/peer-endpoint/README.md (venv in /tmp/peer/venv, artifacts built);
``--skip-peer`` measures ours alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PEER_SRC = (ROOT.parent / "shared" / "peer-endpoint").resolve()
TARGET_RATIO = 1.5
TARGET_P99_MS = 5.0


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ping(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"nothing answered /ping on port {port} within {timeout:.0f} s")


class OurServer:
    name = "mlops (gunicorn + falcon)"

    def __init__(self, model_dir: Path, workers: int, threads: int, worker_class: str) -> None:
        self.model_dir, self.workers, self.threads, self.worker_class = model_dir, workers, threads, worker_class
        self.process: subprocess.Popen | None = None

    def start(self, port: int) -> None:
        self.log = open(tempfile.mktemp(prefix="bench-endpoint-", suffix=".log"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlops.serve.server", "--model-dir", str(self.model_dir), "--port", str(port),
             "--workers", str(self.workers), "--threads", str(self.threads), "--worker-class", self.worker_class],
            cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ping(port)

    def stop(self, port: int) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        os.unlink(self.log.name)


class PeerServer:
    name = "SageMaker PyTorch serving (TorchServe + inference toolkit)"

    def __init__(self, peer_dir: Path, workers: int, omp_threads: int | None) -> None:
        self.peer_dir, self.workers, self.omp = peer_dir, workers, omp_threads

    def start(self, port: int) -> None:
        env = {**os.environ, "PEER_DIR": str(self.peer_dir)}
        if self.omp:
            env["OMP_NUM_THREADS"] = str(self.omp)
        out = subprocess.run(["bash", str(PEER_SRC / "start_peer.sh"), str(self.workers), str(port)], env=env,
                             capture_output=True, text=True, timeout=240, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"start_peer.sh failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")

    def stop(self, port: int) -> None:
        subprocess.run(["bash", str(PEER_SRC / "stop_peer.sh"), str(port)], env={**os.environ,
                       "PEER_DIR": str(self.peer_dir)}, capture_output=True, timeout=60, check=False)
        log = self.peer_dir / f"run-{port}" / "peer.log"  # ~2 KB per request: not worth keeping
        log.unlink(missing_ok=True)


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


def build_model_dir(folder: Path) -> Path:
    from tests.helpers.models import write_cnn_model_dir

    return write_cnn_model_dir(folder)  # the compact CNN with default hyperparameters; weights don't change speed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="an unpacked model (default: a compact CNN built here)")
    parser.add_argument("--peer-dir", type=Path, default=Path("/tmp/peer"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-c", "--concurrency", default="1,8,32")
    parser.add_argument("-d", "--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tool", choices=["hey", "python"], default="hey")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (ours)")
    parser.add_argument("--worker-class", choices=["gthread", "sync"], default="gthread")
    parser.add_argument("--peer-workers", type=int, default=2)
    parser.add_argument("--peer-omp", type=int, default=1, help="OMP_NUM_THREADS for the peer (0: unset)")
    parser.add_argument("--max-load", type=float, default=1.0)
    parser.add_argument("--wait-load", type=float, default=300, help="seconds to wait for a quiet machine")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "endpoint.json")
    args = parser.parse_args(argv)

    png = args.peer_dir / "artifacts" / "sample.png"
    if not png.is_file():
        raise SystemExit(f"{png} missing: build the peer's artifacts first (../shared/peer-endpoint/README.md)")
    with tempfile.TemporaryDirectory(prefix="bench-endpoint-") as tmp:
        model_dir = args.model_dir or build_model_dir(Path(tmp) / "model")
        config = json.loads((model_dir / "model_config.json").read_text())
        servers = [OurServer(model_dir, args.workers, args.threads, args.worker_class)]
        if not args.skip_peer:
            servers.append(PeerServer(args.peer_dir, args.peer_workers, args.peer_omp or None))
        runs = []
        for round_no in range(args.rounds):
            order = servers if round_no % 2 == 0 else list(reversed(servers))
            for server in order:
                load_before = wait_for_quiet(args.max_load, args.wait_load)
                port = free_port()
                print(f"round {round_no + 1}: {server.name} on :{port}, load {load_before}", flush=True)
                server.start(port)
                try:
                    points = run_loadtest(port, png, args, server.name)
                finally:
                    server.stop(port)
                runs.append({"round": round_no + 1, "server": server.name, "load1_before": load_before,
                             "load1_after": load1(), "points": points})

    summary = summarise(runs)
    ours = summary[servers[0].name]
    result = {
        "benchmark": "local endpoint vs SageMaker PyTorch serving stack, single 28x28 PNG (139 bytes)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "note": "load generator on the same cores as the server; load1 = 1-minute load average"},
        "settings": {"rounds": args.rounds, "concurrency": args.concurrency, "duration_s": args.duration,
                     "warmup_s": args.warmup, "tool": args.tool,
                     "ours": {"workers": args.workers, "torch_threads": args.threads, "worker_class": args.worker_class,
                              "model": {k: config.get(k) for k in ("framework", "architecture", "width",
                                                                     "kernel_size")}},
                     "peer": None if args.skip_peer else {"workers": args.peer_workers,
                                                          "OMP_NUM_THREADS": args.peer_omp or None,
                                                          "model": "TinyMnistCNN (5.3k parameters), build_model.py"}},
        "summary_median": summary,
        "runs": runs,
    }
    saturation = max(v["rps"] for v in ours.values())
    targets = {"ours_c1_p99_ms": ours.get("1", {}).get("p99_ms"), "ours_saturation_rps": saturation,
               "target_c1_p99_ms": TARGET_P99_MS}
    targets["c1_p99_met"] = targets["ours_c1_p99_ms"] is not None and targets["ours_c1_p99_ms"] <= TARGET_P99_MS
    if not args.skip_peer:
        peer_saturation = max(v["rps"] for v in summary[servers[1].name].values())
        targets |= {"peer_saturation_rps": peer_saturation, "ratio": round(saturation / peer_saturation, 2),
                    "target_ratio": TARGET_RATIO, "ratio_met": saturation / peer_saturation >= TARGET_RATIO}
    result["targets"] = targets
    from training.atomic import atomic_write_json

    atomic_write_json(args.out, result)
    print(json.dumps({"summary_median": summary, "targets": targets}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
