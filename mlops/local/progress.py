"""Progress of a local execution: a rich live table on a terminal, plain timestamped lines otherwise.

Both receive the same events from the engine (step status changes, per-epoch progress parsed from the
training logs' metrics lines) and print the same summary at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

STATUS_STYLE = {"Pending": "dim", "Executing": "yellow", "Succeeded": "green", "Failed": "bold red",
                "Stopped": "magenta", "Skipped": "dim"}


class PlainReporter:
    """One line per event; per-step progress throttled so logs stay readable."""

    def __init__(self, stream: TextIO | None = None, throttle_s: float = 5.0) -> None:
        self.stream = stream or sys.stdout
        self.throttle_s = throttle_s
        self.last: dict[str, float] = {}
        self.lock = threading.Lock()

    def _print(self, text: str) -> None:
        with self.lock:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def start(self, execution_id: str, steps: dict[str, str]) -> None:
        self._print(f"execution {execution_id}: {len(steps)} steps")

    def step_status(self, step: str, status: str, detail: str = "") -> None:
        self._print(f"{step}: {status}" + (f" ({detail})" if detail else ""))

    def step_progress(self, step: str, detail: str) -> None:
        now = time.monotonic()
        if now - self.last.get(step, 0.0) < self.throttle_s:
            return
        self.last[step] = now
        self._print(f"{step}: {detail}")

    def stop(self) -> None:
        pass


class LiveReporter:
    """A live table of steps: status, duration, latest progress line."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.rows: dict[str, dict[str, Any]] = {}
        self.execution_id = ""
        self.lock = threading.Lock()
        self.live: Live | None = None

    def start(self, execution_id: str, steps: dict[str, str]) -> None:
        self.execution_id = execution_id
        for name, kind in steps.items():
            self.rows[name] = {"type": kind, "status": "Pending", "start": None, "end": None, "detail": ""}
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self) -> Group:
        table = Table(title=f"execution {self.execution_id}", expand=False)
        for column, width in (("step", 14), ("type", 10), ("status", 9), ("time", 7), ("progress", 12)):
            table.add_column(column, no_wrap=True, overflow="ellipsis", min_width=width)
        now = time.time()
        with self.lock:
            for name, row in self.rows.items():
                start, end = row["start"], row["end"]
                elapsed = "" if start is None else f"{(end or now) - start:6.1f}s"
                status = row["status"]
                table.add_row(name, row["type"], Text(status, style=STATUS_STYLE.get(status, "")), elapsed,
                              row["detail"][:90])
        return Group(table)

    def step_status(self, step: str, status: str, detail: str = "") -> None:
        with self.lock:
            row = self.rows.setdefault(step, {"type": "", "status": "", "start": None, "end": None, "detail": ""})
            if status == "Executing" and row["start"] is None:
                row["start"] = time.time()
            if status in ("Succeeded", "Failed", "Stopped"):
                row["start"] = row["start"] or time.time()
                row["end"] = time.time()
            row["status"] = status
            if detail or status != "Succeeded":  # a finished step keeps its last progress line (final metrics)
                row["detail"] = detail

    def step_progress(self, step: str, detail: str) -> None:
        with self.lock:
            if step in self.rows:
                self.rows[step]["detail"] = detail

    def mark_skipped(self, steps: list[str]) -> None:
        with self.lock:
            for step in steps:
                if step in self.rows and self.rows[step]["status"] == "Pending":
                    self.rows[step]["status"] = "Skipped"

    def stop(self) -> None:
        if self.live:
            self.live.refresh()
            self.live.stop()
            self.live = None


def make_reporter(stream: TextIO | None = None) -> PlainReporter | LiveReporter:
    stream = stream or sys.stdout
    if stream.isatty():
        return LiveReporter(Console(file=stream))
    return PlainReporter(stream)


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What to do next, printed after the run: status, reason, report, registered version, next command."""
    lines = [f"execution {summary['execution_id']}: {summary['status']} in {summary['elapsed_s']:.1f} s"]
    if summary.get("failure_reason"):
        lines.append(f"  failure: {summary['failure_reason']}")
    if summary.get("cached_steps"):
        lines.append(f"  from cache: {', '.join(summary['cached_steps'])}")
    if summary.get("report_path"):
        lines.append(f"  report: {summary['report_path']}")
    version = summary.get("model_package_version")
    if version is not None:
        lines.append(f"  registered model: {summary.get('model_package_group')} version {version} "
                     f"({summary.get('model_approval_status')})")
        if summary.get("model_approval_status") == "PendingManualApproval":
            lines.append(f"  next: mlops registry approve --version {version}")
    elif summary["status"] in ("Failed", "Stopped"):
        lines.append(f"  next: mlops executions logs {summary['execution_id']}   "
                     f"(then: mlops executions retry {summary['execution_id']})")
    return lines
