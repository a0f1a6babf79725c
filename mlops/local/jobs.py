"""Run one job's process the way a SageMaker container would, and classify how it ended.

A job is a child process with its output teed line by line into the job's log (and to a callback that
reads metrics lines as they come). It dies with its runner: the child arms PR_SET_PDEATHSIG before exec,
so SIGKILLing `mlops run` leaves no orphan training behind to write into folders a retry will reuse.
The exit decides the retry category, like SageMaker's: a job that exits non-zero is an algorithm error, and
so is one killed by a signal we did not send (SIGKILL is what the out-of-memory killer sends; SageMaker
reports such a job as failed with exit code 137 and does not retry it). Only a job that could not be started
at all is a capacity error that the step's RetryPolicies may retry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

# The retry categories a local failure can fall in. SageMaker.JOB_INTERNAL_ERROR (a fault of the service) and
# SageMaker.RESOURCE_LIMIT (an account quota) have no local cause, so nothing here is classified as either.
CAPACITY_ERROR = "SageMaker.CAPACITY_ERROR"
SERVICE_FAULT = "Step.SERVICE_FAULT"
THROTTLING = "Step.THROTTLING"

# Arms PR_SET_PDEATHSIG=SIGKILL, checks the parent did not already die, then becomes the job.
PDEATHSIG_SHIM = (
    "import ctypes,os,sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(137)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


_ACTIVE: set[int] = set()  # process groups of running jobs, so a stopping runner can end them all
_ACTIVE_LOCK = threading.Lock()
STOPPING = threading.Event()  # set when the execution is being stopped: running jobs end as Stopped


def stop_all_jobs() -> None:
    """Stop every job process this runner started (SIGTERM to each group, SIGKILL 10 s later)."""
    STOPPING.set()
    with _ACTIVE_LOCK:
        groups = list(_ACTIVE)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        killer = threading.Timer(10.0, _killpg, args=(pid,))
        killer.daemon = True
        killer.start()


class JobFailed(Exception):
    """A job (or a step's local work) failed; ``exception_type`` is the retry category, None = not retryable."""

    def __init__(self, reason: str, exception_type: str | None = None, status: str = "Failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.exception_type = exception_type
        self.status = status


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def run_process(argv: list[str], *, cwd: Path, env: dict[str, str], log_path: Path,
                on_line: Callable[[str], bool | str | None] | None = None, timeout_s: float | None = None,
                failure_file: Path | None = None, what: str = "job",
                on_start: Callable[[int], None] | None = None) -> float:
    """Run ``argv`` to completion and return its wall time in seconds; raise :class:`JobFailed` unless it exits 0.

    ``on_line`` sees every output line; returning True (or a reason starting with "stopped") asks the job to
    stop (SIGTERM, then SIGKILL after 10 s), which ends it as Stopped. ``timeout_s`` is MaxRuntimeInSeconds.
    ``on_start`` gets the process id once it runs (the profiler samples its process tree).
    """
    if STOPPING.is_set():
        raise JobFailed(f"the {what} was not started: the execution is stopping", None, status="Stopped")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-c", PDEATHSIG_SHIM, str(os.getpid()), *argv] if sys.platform == "linux" else argv
    with open(log_path, "ab", buffering=0) as log:
        log.write(f"[mlops] {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {' '.join(argv)}\n".encode())
        began = time.perf_counter()
        try:
            process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            raise JobFailed(f"could not start the {what} process {argv[0]!r}: {exc}", CAPACITY_ERROR) from exc
        with _ACTIVE_LOCK:
            _ACTIVE.add(process.pid)
        stop_reason: list[str] = []
        if on_start is not None:
            on_start(process.pid)

        def terminate(reason: str) -> None:
            if stop_reason:
                return
            stop_reason.append(reason)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            killer = threading.Timer(10.0, lambda: _killpg(process.pid))
            killer.daemon = True
            killer.start()

        timer = None
        if timeout_s:
            timer = threading.Timer(timeout_s, terminate, args=(f"MaxRuntimeExceeded: ran over {timeout_s:.0f} s",))
            timer.daemon = True
            timer.start()
        try:
            assert process.stdout is not None
            for raw in process.stdout:
                log.write(raw)
                if on_line is not None:
                    try:
                        verdict = on_line(raw.decode("utf-8", errors="replace"))
                        if verdict:
                            terminate(verdict if isinstance(verdict, str)
                                      else "stopped early by the tuning job's early-stopping rule")
                    except Exception as exc:  # a broken callback must not hang the job  # noqa: BLE001
                        log.write(f"[mlops] progress callback failed: {exc}\n".encode())
            code = process.wait()
            elapsed = time.perf_counter() - began
        except BaseException:
            _killpg(process.pid)
            process.wait()
            raise
        finally:
            if timer:
                timer.cancel()
            with _ACTIVE_LOCK:
                _ACTIVE.discard(process.pid)
        log.write(f"[mlops] {time.strftime('%Y-%m-%dT%H:%M:%S')} exit code {code}\n".encode())
    if code == 0 and not stop_reason:
        return elapsed
    if STOPPING.is_set():
        raise JobFailed(f"the {what} was stopped with the execution", None, status="Stopped")
    if stop_reason:
        status = "Stopped" if stop_reason[0].startswith("stopped") else "Failed"
        raise JobFailed(stop_reason[0], None, status=status)
    if code < 0 or code == 137:
        name = signal.Signals(-code).name if code < 0 else "SIGKILL (exit code 137)"
        raise JobFailed(f"AlgorithmError: the {what} process was killed by {name}: out of memory, or killed from "
                        "outside; not retried, as SageMaker does not retry it", None)
    reason = ""
    if failure_file and failure_file.is_file():
        reason = failure_file.read_text(errors="replace").strip()
    reason = reason or _tail(log_path, 4)
    raise JobFailed(f"AlgorithmError: {what} exited with code {code}: {reason}", None)


def _killpg(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def extract_tar(archive: Path, destination: Path) -> None:
    """Extract safely: tarfile's "data" filter refuses absolute paths, links out of the tree and devices."""
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise JobFailed(f"cannot extract {archive.name}: {exc}", None) from exc


def pack_dir(source: Path, archive: Path) -> Path:
    """tar.gz the contents of ``source`` (entries at the archive root, as SageMaker packs model.tar.gz)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".tmp", dir=archive.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for entry in sorted(source.iterdir()) if source.is_dir() else []:
                tar.add(entry, arcname=entry.name)
        os.replace(tmp, archive)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return archive
