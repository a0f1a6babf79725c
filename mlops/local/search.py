"""Search strategies and early stopping for the local tuner, as SageMaker's tuning jobs offer them.

Random, Grid, Bayesian (optuna's TPE sampler) and Hyperband (TPE proposals, optuna's HyperbandPruner stopping
trials on the objective each prints per epoch; the resource is the epoch: MinResource/MaxResource come from
HyperbandStrategyConfig, else 1 and the static ``epochs`` hyperparameter, as SageMaker infers it). Early
stopping "Auto" is the median stopping rule SageMaker documents. Add a strategy with :func:`register_strategy`.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
import threading
from collections.abc import Callable
from typing import Any, Protocol

import optuna

from mlops.local.jobs import JobFailed

optuna.logging.set_verbosity(optuna.logging.WARNING)

# --- the search space ---------------------------------------------------------------------------------------


class Range:
    """One hyperparameter range as the definition states it (values are the strings SageMaker passes)."""

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        self.kind = kind
        self.name = spec["Name"]
        self.scaling = spec.get("ScalingType", "Auto")
        if kind == "Categorical":
            self.values = [str(v) for v in spec.get("Values") or []]
            if not self.values:
                raise JobFailed(f"CategoricalParameterRanges {self.name}: Values is empty")
        else:
            try:
                self.low, self.high = float(spec["MinValue"]), float(spec["MaxValue"])
            except (KeyError, TypeError, ValueError) as exc:
                raise JobFailed(f"{kind}ParameterRanges {self.name}: MinValue/MaxValue must be numbers, "
                                f"got {spec}") from exc
            if self.low > self.high:
                raise JobFailed(f"{kind}ParameterRanges {self.name}: MinValue {self.low} > MaxValue {self.high}")
            if self.scaling in ("Logarithmic", "ReverseLogarithmic") and self.low <= 0:
                raise JobFailed(f"{kind}ParameterRanges {self.name}: {self.scaling} scaling needs MinValue > 0")

    def format(self, value: float | str) -> str:
        if self.kind == "Integer":
            return str(round(float(value)))
        if self.kind == "Continuous":
            return repr(float(value))
        return str(value)

    def sample(self, rng: random.Random) -> str:
        if self.kind == "Categorical":
            return rng.choice(self.values)
        if self.scaling == "Logarithmic":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        elif self.scaling == "ReverseLogarithmic":
            value = self.high + self.low - math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.kind == "Integer":
            value = min(self.high, max(self.low, round(value)))
        return self.format(value)


def parse_ranges(parameter_ranges: dict[str, Any]) -> list[Range]:
    ranges = []
    for kind in ("Continuous", "Integer", "Categorical"):
        for spec in parameter_ranges.get(f"{kind}ParameterRanges") or []:
            ranges.append(Range(kind, spec))
    if not ranges:
        raise JobFailed("HyperParameterTuningJobConfig.ParameterRanges declares no range to search")
    return ranges


# --- strategies -----------------------------------------------------------------------------------------------


class SearchStrategy(Protocol):
    """Proposes hyperparameters and learns from results; called from one thread."""

    def suggest(self) -> dict[str, str] | None:
        """The next trial's tuned hyperparameters, or None when the space is exhausted."""

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        """A trial ended: its objective value, or None when it failed."""


class RandomSearch:
    def __init__(self, ranges: list[Range], maximize: bool, seed: int, max_jobs: int) -> None:
        self.ranges, self.rng = ranges, random.Random(seed)

    def suggest(self) -> dict[str, str]:
        return {r.name: r.sample(self.rng) for r in self.ranges}

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        pass


class GridSearch:
    """Every combination in order; SageMaker allows Grid with categorical ranges only."""

    def __init__(self, ranges: list[Range], maximize: bool, seed: int, max_jobs: int) -> None:
        bad = [r.name for r in ranges if r.kind != "Categorical"]
        if bad:
            raise JobFailed(f"Grid search needs categorical ranges only; {bad} are not categorical")
        self.names = [r.name for r in ranges]
        self.grid = itertools.product(*(r.values for r in ranges))

    def suggest(self) -> dict[str, str] | None:
        combination = next(self.grid, None)
        return None if combination is None else dict(zip(self.names, combination, strict=True))

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        pass


class BayesianSearch:
    """Bayesian optimisation with optuna's TPE sampler (ask/tell), seeded for reproducible runs."""

    def __init__(self, ranges: list[Range], maximize: bool, seed: int, max_jobs: int) -> None:
        self.ranges = ranges
        self.optuna = optuna
        startup = max(1, min(10, max_jobs // 2))
        self.study = optuna.create_study(direction="maximize" if maximize else "minimize",
                                         sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))
        self.pending: dict[str, Any] = {}

    def suggest(self) -> dict[str, str]:
        trial = self.study.ask()
        tuned = {}
        for r in self.ranges:
            if r.kind == "Categorical":
                value: Any = trial.suggest_categorical(r.name, r.values)
            elif r.kind == "Integer":
                value = trial.suggest_int(r.name, int(r.low), int(r.high), log=r.scaling == "Logarithmic")
            else:
                value = trial.suggest_float(r.name, r.low, r.high, log=r.scaling == "Logarithmic")
            tuned[r.name] = r.format(value)
        self.pending[json.dumps(tuned, sort_keys=True)] = trial
        return tuned

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        trial = self.pending.pop(json.dumps(tuned, sort_keys=True), None)
        if trial is None:
            return
        if objective is None or not math.isfinite(objective):
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, objective)


class HyperbandSearch:
    """TPE proposals + Hyperband pruning on per-epoch objective values (optuna ask/tell)."""

    def __init__(self, ranges: list[Any], maximize: bool, seed: int, max_jobs: int) -> None:
        self.optuna = optuna
        self.search = BayesianSearch(ranges, maximize, seed, max_jobs)
        self.metric: str | None = None
        self.pruned: set[int] = set()
        self.lock = threading.Lock()
        self.configure({}, {})

    def configure(self, config: dict[str, Any], static: dict[str, str], metric: str | None = None) -> None:
        """Set the resource range from HyperbandStrategyConfig (or the static epochs) and the objective."""
        hyperband = ((config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {})
        epochs = static.get("epochs")
        low = int(hyperband.get("MinResource") or 1)
        high = int(hyperband.get("MaxResource") or (json.loads(epochs) if epochs else 0) or 0)
        if high and low > high:
            raise JobFailed(f"HyperbandStrategyConfig: MinResource {low} > MaxResource {high}")
        pruner = self.optuna.pruners.HyperbandPruner(min_resource=low, max_resource=high or "auto",
                                                     reduction_factor=3)
        self.search.study.pruner = pruner
        self.metric = metric or self.metric

    def suggest(self) -> dict[str, str] | None:
        return self.search.suggest()

    def monitor(self, tuned: dict[str, str]) -> Any:
        """The per-line callback of one trial: report the newest objective value, True when Hyperband prunes."""
        trial = self.search.pending.get(json.dumps(tuned, sort_keys=True))
        if trial is None or self.metric is None:
            return None

        def should_stop(series: dict[str, list[float]]) -> bool:
            values = series.get(self.metric) or []
            if not values or not math.isfinite(values[-1]):
                return False
            with self.lock:
                trial.report(values[-1], step=len(values))
                if trial.should_prune():
                    self.pruned.add(trial.number)
                    return True
            return False

        return should_stop

    def observe(self, tuned: dict[str, str], objective: float | None) -> None:
        key = json.dumps(tuned, sort_keys=True)
        trial = self.search.pending.get(key)
        if trial is not None and trial.number in self.pruned:
            self.search.pending.pop(key)
            with self.lock:
                self.search.study.tell(trial, state=self.optuna.trial.TrialState.PRUNED)
            return
        self.search.observe(tuned, objective)



StrategyFactory = Callable[[list[Range], bool, int, int], SearchStrategy]
STRATEGIES: dict[str, StrategyFactory] = {"Random": RandomSearch, "Grid": GridSearch, "Bayesian": BayesianSearch,
                                          "Hyperband": HyperbandSearch}


def register_strategy(name: str, factory: StrategyFactory) -> None:
    """Plug in another strategy (e.g. Hyperband) under the name the definition's Strategy field uses."""
    STRATEGIES[name] = factory


# --- early stopping -------------------------------------------------------------------------------------------


class MedianStopping:
    """SageMaker's "Auto" early stopping: stop a trial whose objective at epoch n is worse than the median of
    the running averages of earlier trials' objective up to epoch n (needs at least 3 earlier trials)."""

    min_trials = 3

    def __init__(self, metric: str, maximize: bool) -> None:
        self.metric, self.maximize = metric, maximize
        self.finished: list[list[float]] = []
        self.lock = threading.Lock()

    def add(self, series: list[float]) -> None:
        with self.lock:
            if series:
                self.finished.append(list(series))

    def should_stop(self, series: dict[str, list[float]]) -> bool:
        values = series.get(self.metric) or []
        n = len(values)
        if n == 0:
            return False
        with self.lock:
            averages = [sum(s[:n]) / n for s in self.finished if len(s) >= n]
        if len(averages) < self.min_trials:
            return False
        median = statistics.median(averages)
        return values[-1] < median if self.maximize else values[-1] > median
