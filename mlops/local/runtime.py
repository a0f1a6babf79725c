"""What a step executor is given (StepRun) and returns (StepResult), and the shared CPU budget.

The CPU budget stands in for SageMaker instances: every job process holds some cores while it runs, so
independent steps (the two trainings, tuning trials) run side by side without oversubscribing the machine.
A job's share is the budget divided among the jobs running or waiting, decided when it starts.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlops.definition.model import Step


class Reporter(Protocol):
    """Where progress goes (rich live table, plain lines, or nowhere)."""

    def step_status(self, step: str, status: str, detail: str = "") -> None: ...

    def step_progress(self, step: str, detail: str) -> None: ...


class NullReporter:
    def step_status(self, step: str, status: str, detail: str = "") -> None:
        pass

    def step_progress(self, step: str, detail: str) -> None:
        pass


def default_cpu_budget() -> int:
    """$MLOPS_CPUS, else the cores this process may use."""
    configured = os.environ.get("MLOPS_CPUS")
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise ValueError(f"MLOPS_CPUS={configured!r}: expected a whole number of cores >= 1")
        return int(configured)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def thread_env(cpus: int) -> dict[str, str]:
    """Keep numeric libraries within the job's share of the CPU budget."""
    value = str(cpus)
    return {"OMP_NUM_THREADS": value, "MKL_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value,
            "NUMEXPR_NUM_THREADS": value}


class CpuPool:
    """Cores shared by the job processes of one execution.

    The scheduler hands a :class:`Ticket` to each job step it starts in one go, so those jobs count in
    each other's share and go before jobs that ask without one (tuning trials): the two trainings start
    side by side instead of queueing behind trials that happened to ask first.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self.tickets = 0  # reserved by the scheduler, not yet used
        self.waiting = 0  # asked without a ticket, not yet served
        self.holders = 0
        self._cond = threading.Condition()

    def ticket(self) -> Ticket:
        with self._cond:
            self.tickets += 1
        return Ticket(self)

    def _cancel(self) -> None:
        with self._cond:
            self.tickets -= 1
            self._cond.notify_all()

    def acquire(self, cap: int | None = None, ticket: Ticket | None = None) -> int:
        """Block until a core is free; return how many this job gets (its fair share, at least 1)."""
        with self._cond:
            reserved = ticket is not None and ticket.take()
            if reserved:
                self.tickets -= 1
                while self.free < 1:
                    self._cond.wait()
            else:
                self.waiting += 1
                while self.free - self.tickets < 1:
                    self._cond.wait()
                self.waiting -= 1
            share = max(1, self.total // max(1, self.holders + self.tickets + self.waiting + 1))
            grant = max(1, min(self.free, share, cap or self.total))
            self.free -= grant
            self.holders += 1
            return grant

    def release(self, count: int) -> None:
        with self._cond:
            self.free += count
            self.holders -= 1
            self._cond.notify_all()


class Ticket:
    """A place in the CPU queue reserved by the scheduler; used by the job's first acquire, or cancelled."""

    def __init__(self, pool: CpuPool) -> None:
        self.pool = pool
        self.pending = True
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            taken, self.pending = self.pending, False
            return taken

    def cancel(self) -> None:
        if self.take():
            self.pool._cancel()


@dataclass
class StepRun:
    """One attempt of one step: resolved arguments and where its files go."""

    execution_id: str
    pipeline_name: str
    step_name: str
    step_type: str
    arguments: dict[str, Any]
    raw_step: Step  # the step as the definition states it
    work_dir: Path
    log_path: Path
    attempt: int
    pool: CpuPool
    reporter: Reporter
    ticket: Ticket | None = None

    def job_name(self, suffix: str = "") -> str:
        """A SageMaker-valid job name, unique per execution, step and attempt."""
        return job_name(self.execution_id, self.step_name, self.attempt, suffix)


def job_name(execution_id: str, step_name: str, attempt: int, suffix: str = "") -> str:
    step = re.sub(r"[^a-zA-Z0-9-]+", "-", step_name).strip("-")[:24]
    name = f"pipelines-{execution_id}-{step}-a{attempt}{suffix}"
    return re.sub(r"-{2,}", "-", name)[:63].rstrip("-")


@dataclass
class StepResult:
    properties: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
