"""What a step executor is given (StepRun) and returns (StepResult), and the size of the CPU budget.

The budget stands in for SageMaker instances: every job process holds some cores while it runs, so
independent steps (the two trainings, tuning trials) run side by side without oversubscribing the machine;
:mod:`mlops.local.cpus` decides who gets them (critical path first).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlops.definition.model import Step
from mlops.local.cpus import Claim, CpuPool


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
    claim: Claim | None = None  # the step's place in the CPU queue (the engine's; None: the job asks alone)

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
