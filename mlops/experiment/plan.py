"""What an experiment varies and what it keeps fixed: factors, variants, seeds, and the jobs they make.

A factor is one hyperparameter of training/train_cnn.py with two or more levels (``--vary kernel-size=3,5``).
With one factor the variants are its levels. With several, the default design is one factor at a time: the
baseline takes the first level of every factor and each other variant changes exactly one factor from it, so
every comparison with the baseline is controlled. ``grid`` gives the full product instead. Every variant runs
with the same seeds, the same epochs and the same fixed hyperparameters (train_cnn.py's defaults, or ``--set``).

Names may be given with dashes or underscores (``batch-size``, ``batch_size``); values are typed and checked
with the script's own TrainConfig, so a variant the job would refuse is refused here, before anything runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.image_classification.experiment import PlannedJob

CONTROLLED = {"epochs": "--epochs", "seed": "--seeds"}  # fixed for every variant by the command's own options
ONE_AT_A_TIME, GRID = "one factor at a time", "full grid"
MAX_VARIANTS = 64


class PlanError(ValueError):
    """A factor, level or fixed hyperparameter the experiment cannot run; the message names it."""


def hyperparameter_types() -> dict[str, tuple[type, Any]]:
    """train_cnn.py's hyperparameters by their command-line names: ``{"kernel-size": (int, 3), ...}``."""
    from training.train_cnn import TrainConfig  # imports torch: only when an experiment is planned

    defaults = TrainConfig()
    return {f.name.replace("_", "-"): (type(getattr(defaults, f.name)), getattr(defaults, f.name))
            for f in dataclasses.fields(TrainConfig)}


def _name(raw: str, option: str, known: dict[str, tuple[type, Any]]) -> str:
    name = raw.strip().lower().replace("_", "-")
    if name in CONTROLLED:
        raise PlanError(f"{option} {raw}: {name} is the same for every variant; set it with {CONTROLLED[name]}")
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        choices = ", ".join(n for n in sorted(known) if n not in CONTROLLED)
        raise PlanError(f"{option} {raw}: unknown hyperparameter {raw.strip()!r}{hint}; train_cnn.py takes: {choices}")
    return name


def parse_value(name: str, text: str, kind: type, option: str) -> Any:
    """One level typed as the script's hyperparameter is: int, float, bool or str."""
    text = text.strip()
    if not text:
        raise PlanError(f"{option} {name}: an empty value")
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        what = {bool: "true or false", int: "a whole number", float: "a finite number"}[kind]
        raise PlanError(f"{option} {name}={text}: {name} takes {what}, got {text!r}") from None
    return text


@dataclass(frozen=True)
class Factor:
    name: str  # the script's command-line name, e.g. kernel-size
    levels: tuple[Any, ...]

    @property
    def baseline(self) -> Any:
        return self.levels[0]


def parse_factor(text: str, known: dict[str, tuple[type, Any]] | None = None) -> Factor:
    """``kernel-size=3,5`` -> Factor("kernel-size", (3, 5)); two or more distinct levels."""
    known = known if known is not None else hyperparameter_types()
    raw, sep, values = text.partition("=")
    if not sep or not raw.strip():
        raise PlanError(f"--vary {text!r}: expected NAME=LEVEL1,LEVEL2[,...], e.g. kernel-size=3,5")
    name = _name(raw, "--vary", known)
    kind = known[name][0]
    levels = tuple(parse_value(name, item, kind, "--vary") for item in values.split(","))
    duplicates = sorted({str(v) for v in levels if levels.count(v) > 1})
    if duplicates:
        raise PlanError(f"--vary {text}: level {', '.join(duplicates)} given more than once")
    if len(levels) < 2:
        raise PlanError(f"--vary {text}: a factor needs at least two levels (to fix a hyperparameter for every "
                        "variant, use --set NAME=VALUE)")
    return Factor(name, levels)


def parse_fixed(items: tuple[str, ...] | list[str], known: dict[str, tuple[type, Any]] | None = None) -> dict[str, Any]:
    """``("optimizer=adamw", "lr=0.003")`` -> typed values, fixed for every variant."""
    known = known if known is not None else hyperparameter_types()
    fixed: dict[str, Any] = {}
    for text in items:
        raw, sep, value = text.partition("=")
        if not sep or not raw.strip():
            raise PlanError(f"--set {text!r}: expected NAME=VALUE, e.g. optimizer=adamw")
        name = _name(raw, "--set", known)
        if "," in value:
            raise PlanError(f"--set {text}: one value only (to compare several, use --vary {name}={value})")
        fixed[name] = parse_value(name, value, known[name][0], "--set")
    return fixed


@dataclass(frozen=True)
class Variant:
    key: str  # V0 (the baseline), V1, ...
    settings: dict[str, Any]  # every factor's level in this variant
    changed: tuple[str, ...]  # the factors that differ from the baseline

    @property
    def is_baseline(self) -> bool:
        return not self.changed

    @property
    def label(self) -> str:
        shown = self.changed or tuple(self.settings)
        return ", ".join(f"{name}={_text(self.settings[name])}" for name in shown)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def step_names(variant: str, seed: int) -> tuple[str, str]:
    return f"Train-{variant}-seed{seed}", f"Evaluate-{variant}-seed{seed}"


@dataclass(frozen=True)
class Plan:
    factors: tuple[Factor, ...]
    variants: tuple[Variant, ...]
    seeds: tuple[int, ...]
    fixed: dict[str, Any] = field(default_factory=dict)
    design: str = ONE_AT_A_TIME

    @property
    def baseline(self) -> Variant:
        return self.variants[0]

    def hyperparameters(self, variant: Variant, seed: int) -> dict[str, Any]:
        """What the variant's job gets besides epochs: the fixed values, every factor's level, the seed."""
        return {**self.fixed, **variant.settings, "seed": seed}

    def jobs(self) -> list[PlannedJob]:
        """Seed by seed, every variant in turn: a slow spell of the machine touches all variants alike."""
        from pipelines.image_classification.experiment import PlannedJob  # the SageMaker SDK: only when building

        return [PlannedJob(*step_names(v.key, seed), self.hyperparameters(v, seed))
                for seed in self.seeds for v in self.variants]

    def comparisons(self) -> list[tuple[Variant, Variant]]:
        """(variant, baseline) for every variant but the baseline."""
        return [(v, self.baseline) for v in self.variants[1:]]

    def describe(self) -> dict[str, Any]:
        return {"design": self.design, "seeds": list(self.seeds), "fixed": self.fixed,
                "factors": [{"name": f.name, "levels": list(f.levels)} for f in self.factors],
                "variants": [{"key": v.key, "label": v.label, "settings": v.settings, "changed": list(v.changed),
                              "baseline": v.is_baseline} for v in self.variants]}


def plan_variants(factors: list[Factor], grid: bool = False) -> list[Variant]:
    """The baseline (first level of every factor) first, then the others: one at a time, or the full grid."""
    base = {f.name: f.baseline for f in factors}
    if grid:
        combos = [dict(zip(base, levels, strict=True)) for levels in itertools.product(*(f.levels for f in factors))]
    else:
        combos = [base] + [{**base, f.name: level} for f in factors for level in f.levels[1:]]
    return [Variant(f"V{i}", combo, tuple(n for n in combo if combo[n] != base[n])) for i, combo in enumerate(combos)]


def make_plan(vary: list[str] | tuple[str, ...], fixed: list[str] | tuple[str, ...] = (), seeds: int = 2,
              grid: bool = False) -> Plan:
    """Parse and check everything an experiment needs; raises :class:`PlanError` naming what is wrong."""
    if not vary:
        raise PlanError("name at least one factor: --vary NAME=LEVEL1,LEVEL2 (e.g. --vary kernel-size=3,5)")
    if seeds < 1:
        raise PlanError(f"--seeds {seeds}: at least one seed")
    known = hyperparameter_types()
    factors = [parse_factor(text, known) for text in vary]
    names = [f.name for f in factors]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PlanError(f"--vary {', '.join(repeated)} given more than once: list all levels in one --vary")
    fixed_values = parse_fixed(fixed, known)
    both = sorted(set(fixed_values) & set(names))
    if both:
        raise PlanError(f"{', '.join(both)}: both varied (--vary) and fixed (--set); choose one")
    variants = plan_variants(factors, grid)
    if len(variants) > MAX_VARIANTS:
        raise PlanError(f"{len(variants)} variants (the grid of {' x '.join(str(len(f.levels)) for f in factors)}); "
                        f"at most {MAX_VARIANTS}: vary fewer factors, or drop --grid")
    _check_with_script(variants, fixed_values)
    return Plan(tuple(factors), tuple(variants), tuple(range(1, seeds + 1)), fixed_values,
                GRID if grid else ONE_AT_A_TIME)


def _check_with_script(variants: list[Variant], fixed: dict[str, Any]) -> None:
    """Each variant's hyperparameters through train_cnn.py's TrainConfig.validate, as the job will check them."""
    from training.train_cnn import TrainConfig

    for variant in variants:
        values = {name.replace("-", "_"): value for name, value in {**fixed, **variant.settings}.items()}
        try:
            TrainConfig(**values).validate()
        except ValueError as exc:
            raise PlanError(f"variant {variant.key} ({variant.label}): {exc}") from None
