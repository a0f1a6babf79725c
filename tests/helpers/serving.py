"""Our endpoint (``python -m mlops.serve.server``) and SageMaker's PyTorch serving stack (the peer) as processes on
free loopback ports, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import ROOT, free_port


def answers_ping(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/ping")
            return conn.getresponse().status == 200
        finally:
            conn.close()
    except OSError:
        return False


@contextlib.contextmanager
def serving(model_dir: str | Path, *args: str, timeout: float = 60) -> Iterator[tuple[int, subprocess.Popen]]:
    """Start the server on ``model_dir`` with extra CLI ``args``; yield (port, process) once /ping answers 200,
    and stop it (SIGTERM, gunicorn drains) on the way out. A server that exits or never answers fails with its log."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops.serve.server", "--model-dir", str(model_dir), "--port", str(port), *args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while not answers_ping(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"server on {model_dir} did not answer /ping (exit {process.poll()}): "
                                       f"{log.read().decode(errors='replace')[-2000:]}")
                time.sleep(0.2)
            yield port, process
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


PEER = ROOT.parent / "shared" / "peer-endpoint"


def free_peer_port() -> int:
    """A free port whose neighbour PORT+2 (TorchServe's metrics address) is free too."""
    import socket

    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 2))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for the peer")


@contextlib.contextmanager
def peer_serving(model_tar: str | Path, work: Path, workers: int = 1,
                 omp_threads: int | None = 1) -> Iterator[int]:
    """SageMaker's PyTorch serving stack (../shared/peer-endpoint/start_peer.sh, this venv) on ``model_tar``;
    yields its port once it is ready and stops it on the way out. A peer that does not start fails with its log."""
    if not (PEER / "start_peer.sh").is_file():
        raise RuntimeError(f"{PEER}/start_peer.sh is missing: the peer needs ../shared/peer-endpoint beside the clone")
    if shutil.which("java") is None:
        raise RuntimeError("TorchServe needs Java 17 on PATH (apt-get install -y openjdk-17-jre-headless)")
    port = free_peer_port()
    env = {**os.environ, "PEER_DIR": str(work), "VENV": sys.prefix, "MODEL_TAR": str(model_tar),
           "ML_BASE": str(work / "ml"), "READY_TIMEOUT": "240"}
    if omp_threads:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    started = subprocess.run(["bash", str(PEER / "start_peer.sh"), str(workers), str(port)], env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    log = work / f"run-{port}" / "peer.log"
    try:
        if started.returncode:
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"the peer did not start:\n{started.stdout}\n{started.stderr}\n{tail}")
        yield port
    finally:
        subprocess.run(["bash", str(PEER / "stop_peer.sh"), str(port)], env=env, capture_output=True, timeout=120,
                       check=False)
        log.unlink(missing_ok=True)  # ~2 KB per request: not worth keeping
