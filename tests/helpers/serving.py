"""Our endpoint (``python -m mlops.serve.server``) as a process on a free loopback port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import http.client
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
