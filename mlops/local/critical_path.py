"""Step priorities for the CPU pool: the longest remaining path from each step to the end of the pipeline.

A step's own length is its duration in the newest successful execution of the same pipeline where it ran
(not a cache hit); without one, a default for its type. A step's priority is its own length plus the
longest priority among the steps that wait for it, so the steps on the critical path outrank the rest.
"""

from __future__ import annotations

from mlops.definition.model import Definition
from mlops.local import records

# Seconds, when no earlier execution says better: jobs take long, the rest is bookkeeping. A tuning step
# counts as two trainings (a search, then the final training waits for it).
DEFAULT_SECONDS = {"Processing": 30.0, "Training": 120.0, "Tuning": 240.0}
OTHER_SECONDS = 1.0
HISTORY_DEPTH = 5  # executions looked at for a step's last real duration


def measured_seconds(pipeline_name: str, exclude_execution: str | None = None) -> dict[str, float]:
    """Each step's duration in the newest successful execution where it really ran."""
    found: dict[str, float] = {}
    executions = [e for e in records.list_executions(pipeline_name)
                  if e.status == records.SUCCEEDED and e.execution_id != exclude_execution]
    for execution in executions[:HISTORY_DEPTH]:
        for step in records.list_steps(execution.execution_id):
            if (step.step_name in found or step.status != records.SUCCEEDED or step.cache_source
                    or step.start_time is None or step.end_time is None):
                continue
            found[step.step_name] = max(0.0, step.end_time - step.start_time)
    return found


def step_seconds(definition: Definition, measured: dict[str, float]) -> dict[str, float]:
    return {name: measured.get(name, DEFAULT_SECONDS.get(step.type, OTHER_SECONDS))
            for name, step in definition.steps.items()}


def _downstream(definition: Definition) -> dict[str, list[str]]:
    """The steps that wait for each step (a condition's branches wait for it: it is in their upstream)."""
    found: dict[str, list[str]] = {name: [] for name in definition.steps}
    for name, step in definition.steps.items():
        for parent in sorted(step.upstream):
            found[parent].append(name)
    return found


def priorities(definition: Definition, seconds: dict[str, float]) -> dict[str, float]:
    """Longest path (in seconds) from each step, itself included, to any step nothing waits for."""
    downstream = _downstream(definition)
    result: dict[str, float] = {}
    for name in reversed(definition.order()):
        result[name] = seconds.get(name, OTHER_SECONDS) + max((result[d] for d in downstream[name]), default=0.0)
    return result


def critical_path(definition: Definition, seconds: dict[str, float]) -> list[str]:
    """The steps of the longest path, first to last (for the report and the logs)."""
    ranks = priorities(definition, seconds)
    downstream = _downstream(definition)
    roots = [name for name, step in definition.steps.items() if not step.upstream]
    if not roots:
        return []
    path = [max(roots, key=lambda n: ranks[n])]
    while downstream[path[-1]]:
        path.append(max(downstream[path[-1]], key=lambda n: ranks[n]))
    return path
