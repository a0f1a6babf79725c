"""SageMaker Debugger's built-in rules, run locally as smdebug custom rules over the job's saved trial.

AWS does not publish the built-in rules' code; each class here implements the rule's documented logic with
its documented default parameters (overridable through the DebugRuleConfiguration's RuleParameters), and the
docstrings say where the documentation left a choice to us. A :class:`RuleRunner` evaluates the rules while
the job runs (every poll, over the steps written so far) and once more when it ends, and reports each rule
the way DescribeTrainingJob's DebugRuleEvaluationStatuses does: NoIssuesFound, IssuesFound (with the step
and the figure that triggered it) or Error. A rule whose action list holds StopTraining, for a prefix that
matches the job's name, asks the runner to stop the job when it fires.
"""

from __future__ import annotations

import os

os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
os.environ.setdefault("SMDEBUG_LOG_LEVEL", "warning")  # smdebug logs INFO lines at import

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

NO_ISSUES, ISSUES, ERROR, IN_PROGRESS = "NoIssuesFound", "IssuesFound", "Error", "InProgress"


def _smdebug() -> Any:
    """smdebug is imported on first use: it logs at import and pulls in protobuf."""
    logging.getLogger("smdebug").setLevel(logging.ERROR)
    from smdebug import modes, rules, trials
    from smdebug.exceptions import RuleEvaluationConditionMet

    return rules.Rule, trials.create_trial, modes, RuleEvaluationConditionMet


@dataclass
class Finding:
    step: int
    detail: str


def _base() -> type:
    return _smdebug()[0]


def build_rule_classes() -> dict[str, type]:
    """The rule classes (smdebug.rules.Rule subclasses), built once smdebug is importable."""
    Rule = _base()
    modes = _smdebug()[2]

    class LocalRule(Rule):
        """Keeps the finding that made the rule fire, for StatusDetails."""

        defaults: ClassVar[dict[str, Any]] = {}

        def __init__(self, base_trial: Any, **parameters: Any) -> None:
            super().__init__(base_trial, action_str="")
            self.params = dict(self.defaults)
            for key, value in parameters.items():
                if key in self.defaults:
                    self.params[key] = type(self.defaults[key])(value)
            self.finding: Finding | None = None

        def fire(self, step: int, detail: str) -> bool:
            self.finding = Finding(step, detail)
            return True

        def losses(self, mode: Any) -> list[tuple[int, float]]:
            """(global step, loss) in ``mode`` from the losses collection, in step order (values read once)."""
            cache = self.__dict__.setdefault("_loss_cache", {})
            found: dict[int, float] = cache.setdefault(mode, {})
            for name in self.base_trial.tensor_names(collection="losses"):
                tensor = self.base_trial.tensor(name)
                for mode_step in tensor.steps(mode=mode):
                    step = self.base_trial.global_step(mode, mode_step)
                    if step not in found:
                        found[step] = float(np.mean(tensor.value(mode_step, mode=mode)))
            return sorted(found.items())

    class VanishingGradient(LocalRule):
        """Fires when the mean absolute value of any saved gradient tensor drops below ``threshold`` (1e-7)."""

        defaults: ClassVar[dict[str, Any]] = {"threshold": 1e-7}

        def invoke_at_step(self, step: int) -> bool:
            for name in self.base_trial.tensor_names(collection="gradients"):
                tensor = self.base_trial.tensor(name)
                if step not in tensor.steps():
                    continue
                mean_abs = float(np.mean(np.abs(tensor.value(step))))
                if mean_abs < self.params["threshold"]:
                    return self.fire(step, f"{name}: mean |gradient| {mean_abs:.3g} < threshold "
                                           f"{self.params['threshold']:g}")
            return False

    class Overfit(LocalRule):
        """Compares each validation loss with the mean training loss saved since the previous validation:
        fires when (val - train) / train exceeds ``ratio_threshold`` (0.1) for ``patience`` (1) validations in a
        row, from ``start_step`` (0) on."""

        defaults: ClassVar[dict[str, Any]] = {"start_step": 0, "patience": 1, "ratio_threshold": 0.1}

        def __init__(self, base_trial: Any, **parameters: Any) -> None:
            super().__init__(base_trial, **parameters)
            self.strikes = 0
            self.previous_eval = -1

        def invoke_at_step(self, step: int) -> bool:
            evals = dict(self.losses(modes.EVAL))
            if step not in evals or step < self.params["start_step"]:
                return False
            train = [loss for s, loss in self.losses(modes.TRAIN) if self.previous_eval < s < step]
            self.previous_eval = step
            if not train:
                return False
            train_mean = float(np.mean(train))
            ratio = (evals[step] - train_mean) / max(train_mean, 1e-12)
            self.strikes = self.strikes + 1 if ratio > self.params["ratio_threshold"] else 0
            if self.strikes >= self.params["patience"]:
                return self.fire(step, f"validation loss {evals[step]:.4f} vs mean training loss {train_mean:.4f}: "
                                       f"ratio {ratio:.2f} > ratio_threshold {self.params['ratio_threshold']:g}")
            return False

    class Overtraining(LocalRule):
        """Fires when the validation loss has not reached a new optimum for ``patience_validation`` (10)
        validations in a row while the training loss kept improving within its last ``patience_train`` (5)
        saves: the model keeps fitting the training data without generalising better. A new optimum must
        improve on the best by more than ``delta`` (0.01), which we read as relative (1% of the best loss)."""

        defaults: ClassVar[dict[str, Any]] = {"patience_train": 5, "patience_validation": 10, "delta": 0.01}

        def invoke_at_step(self, step: int) -> bool:
            evals = [(s, v) for s, v in self.losses(modes.EVAL) if s <= step]
            if not evals or evals[-1][0] != step:
                return False
            stale, best = self._stale([v for _, v in evals])
            train = [v for s, v in self.losses(modes.TRAIN) if s <= step]
            train_stale, _ = self._stale(train)
            if stale >= self.params["patience_validation"] and train_stale < self.params["patience_train"]:
                return self.fire(step, f"validation loss has not improved on {best:.4f} for {stale} validations "
                                       f"(patience_validation {self.params['patience_validation']}) while the "
                                       "training loss kept improving")
            return False

        def _stale(self, values: list[float]) -> tuple[int, float]:
            best, since = float("inf"), 0
            for value in values:
                if value < best * (1 - self.params["delta"]) or best == float("inf"):
                    best, since = value, 0
                else:
                    since += 1
            return since, best

    class PoorWeightInitialization(LocalRule):
        """Over the first ``steps`` (10) training steps, fires when the ratio of the largest to the smallest
        variance of the ReLU inputs across layers exceeds ``threshold`` (10), or when a layer's inputs span
        less than ``distribution_range`` (0.001). The documentation measures the spread between the 5th and
        95th percentiles; the hook saves reductions (min/max/mean/variance) rather than whole activations, so we
        use max - min, which only fires on layers that are degenerate under either measure."""

        defaults: ClassVar[dict[str, Any]] = {"threshold": 10.0, "distribution_range": 0.001, "steps": 10}

        def invoke_at_step(self, step: int) -> bool:
            mode, mode_step = self.base_trial.mode_modestep(step)
            if mode != modes.TRAIN or mode_step >= self.params["steps"]:
                return False  # evaluation runs BatchNorm on running statistics: not what initialisation gives
            variances, spans = {}, {}
            for name in self.base_trial.tensor_names(collection="relu_input"):
                tensor = self.base_trial.tensor(name)
                if step not in tensor.steps():
                    continue
                variances[name] = float(tensor.reduction_value(step, "variance"))
                spans[name] = float(tensor.reduction_value(step, "max")) - float(tensor.reduction_value(step, "min"))
            for name, span in spans.items():
                if span < self.params["distribution_range"]:
                    return self.fire(step, f"{name}: activation inputs span {span:.3g} < distribution_range "
                                           f"{self.params['distribution_range']:g}")
            if len(variances) >= 2:
                low, high = min(variances.values()), max(variances.values())
                ratio = high / max(low, 1e-30)
                if ratio > self.params["threshold"]:
                    return self.fire(step, f"variance of ReLU inputs ranges {low:.3g}..{high:.3g} across layers: "
                                           f"ratio {ratio:.1f} > threshold {self.params['threshold']:g}")
            return False

    class LossNotDecreasing(LocalRule):
        """Every ``num_steps`` (10) steps of the rule's mode (``mode`` when given; else validation losses when
        there are any, else training losses, as documented), the loss must have decreased by more than
        ``diff_percent`` (default 0: it must decrease at all) from the loss saved at least ``num_steps`` steps
        earlier. ``increase_threshold_percent`` (5) is accepted but cannot change the outcome here: any increase
        already fails the decrease test at a check."""

        defaults: ClassVar[dict[str, Any]] = {"num_steps": 10, "diff_percent": 0.0, "increase_threshold_percent": 5.0}

        def __init__(self, base_trial: Any, **parameters: Any) -> None:
            super().__init__(base_trial, **parameters)
            self.mode_name = str(parameters.get("mode", "")).upper() or None
            self.last_check: int | None = None

        def invoke_at_step(self, step: int) -> bool:
            mode = self._mode()
            if mode is None:
                return False
            series = [(self.base_trial.mode_modestep(s)[1], s, v) for s, v in self.losses(mode) if s <= step]
            if not series or series[-1][1] != step:
                return False
            mode_step, _, loss = series[-1]
            if self.last_check is not None and mode_step - self.last_check < self.params["num_steps"]:
                return False
            earlier = [(m, v) for m, _, v in series if m <= mode_step - self.params["num_steps"]]
            if not earlier:
                return False
            self.last_check = mode_step
            reference_step, reference = earlier[-1]
            decrease = (reference - loss) / max(abs(reference), 1e-12) * 100
            if decrease <= self.params["diff_percent"]:
                return self.fire(step, f"{mode.name} loss {loss:.4f} at {mode.name.lower()} step {mode_step} vs "
                                       f"{reference:.4f} at step {reference_step}: decreased {decrease:.2f}% <= "
                                       f"diff_percent {self.params['diff_percent']:g}%")
            return False

        def _mode(self) -> Any:
            if self.mode_name:
                return getattr(modes, self.mode_name)
            for mode in (modes.EVAL, modes.TRAIN, modes.GLOBAL):
                if self.losses(mode):
                    return mode
            return None

    return {cls.__name__: cls for cls in (VanishingGradient, Overfit, Overtraining, PoorWeightInitialization,
                                          LossNotDecreasing)}


def stop_prefix(parameters: dict[str, Any]) -> str | None:
    """The StopTraining action's job-name prefix, read the way smdebug reads it: the whole action string is
    lower-cased first (smdebug.rules.action.Action), so a prefix with capitals can never match."""
    text = parameters.get("action_json")
    if not text:
        return None
    try:
        actions = json.loads(text.replace('\\"', '"').lower())
    except json.JSONDecodeError:
        return None
    for action in actions if isinstance(actions, list) else []:
        if isinstance(action, dict) and action.get("name") == "stoptraining":
            return str(action.get("training_job_prefix") or "")
    return None


def stop_target(prefix: str, in_progress: list[str]) -> str | None:
    """The job smdebug's StopTrainingAction stops: the InProgress training jobs whose names start with the
    prefix (case-sensitively), and only when there is exactly one of them."""
    matches = [name for name in in_progress if name.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


class RuleRunner:
    """Evaluates a job's DebugRuleConfigurations over its trial as steps appear, and once more at the end."""

    def __init__(self, trial_dir: Path, configurations: list[dict[str, Any]], job_name: str,
                 in_progress: Any = None) -> None:
        self.trial_dir = trial_dir
        self.job_name = job_name
        self.in_progress = in_progress or (lambda: [job_name])  # the InProgress training jobs smdebug would list
        self.configurations = configurations
        self.trial: Any = None
        self.rules: dict[str, Any] = {}
        self.done: dict[str, int] = {}
        self.status: dict[str, dict[str, Any]] = {}
        classes: dict[str, type] = {}
        try:
            classes = build_rule_classes()
        except ImportError as exc:
            for config in configurations:
                self._set(config["RuleConfigurationName"], ERROR, f"smdebug is not installed: {exc}")
        self.classes = classes
        for config in configurations:
            name = config["RuleConfigurationName"]
            invoke = (config.get("RuleParameters") or {}).get("rule_to_invoke", name)
            if classes and invoke not in classes:
                self._set(name, ERROR, f"rule_to_invoke {invoke!r} is not a built-in rule we run locally "
                                       f"(have {sorted(classes)})")
            elif classes:
                self._set(name, IN_PROGRESS, "")

    def _set(self, name: str, status: str, details: str) -> None:
        self.status[name] = {"RuleConfigurationName": name, "RuleEvaluationStatus": status,
                             "StatusDetails": details, "LastModifiedTime": time.time()}

    def _open(self) -> bool:
        if self.trial is not None:
            return True
        if not (self.trial_dir / "index").is_dir() and not (self.trial_dir / "events").is_dir():
            return False
        create_trial = _smdebug()[1]
        self.trial = create_trial(str(self.trial_dir))
        for config in self.configurations:
            name = config["RuleConfigurationName"]
            if self.status[name]["RuleEvaluationStatus"] != IN_PROGRESS:
                continue
            parameters = {k: v for k, v in (config.get("RuleParameters") or {}).items()
                          if k not in ("rule_to_invoke", "action_json")}
            invoke = (config.get("RuleParameters") or {}).get("rule_to_invoke", name)
            try:
                self.rules[name] = self.classes[invoke](self.trial, **parameters)
            except (TypeError, ValueError) as exc:
                self._set(name, ERROR, f"bad RuleParameters {parameters}: {exc}")
            self.done[name] = -1
        return True

    def poll(self, final: bool = False) -> list[str]:
        """Evaluate the steps written since the last poll; return the rules that fired now with StopTraining."""
        if not self.classes or not self._open():
            return []
        condition_met = _smdebug()[3]
        steps = sorted(self.trial.steps())
        if not final:
            steps = steps[:-1]  # the newest step may still be written
        stop = []
        for name, rule in self.rules.items():
            if self.status[name]["RuleEvaluationStatus"] != IN_PROGRESS:
                continue
            try:
                for step in steps:
                    if step <= self.done[name]:
                        continue
                    self.done[name] = step
                    rule.invoke(step)
            except condition_met:
                finding = rule.finding
                self._set(name, ISSUES, f"RuleEvaluationConditionMet: Evaluation of the rule {name} at step "
                                        f"{finding.step if finding else '?'} resulted in the condition being met: "
                                        f"{finding.detail if finding else ''}")
                config = next(c for c in self.configurations if c["RuleConfigurationName"] == name)
                prefix = stop_prefix(config.get("RuleParameters") or {})
                if prefix is not None and stop_target(prefix, self.in_progress()) == self.job_name:
                    stop.append(name)
            except Exception as exc:  # a rule that breaks reports Error, as SageMaker's rule jobs do  # noqa: BLE001
                self._set(name, ERROR, f"{type(exc).__name__}: {exc}")
        return stop

    def finish(self, error: str | None = None) -> list[dict[str, Any]]:
        """Final pass over every step; rules that never fired report NoIssuesFound."""
        if error is None:
            try:
                self.poll(final=True)
            except Exception as exc:  # noqa: BLE001
                error = f"{type(exc).__name__}: {exc}"
        for name, entry in self.status.items():
            if entry["RuleEvaluationStatus"] == IN_PROGRESS:
                if error or self.trial is None:
                    self._set(name, ERROR, error or f"no Debugger data was saved under {self.trial_dir}")
                else:
                    self._set(name, NO_ISSUES, f"no issue in {len(self.trial.steps())} saved steps")
        return [self.status[c["RuleConfigurationName"]] for c in self.configurations]
