"""The one-line-per-epoch metrics format and the regexes that read it back.

SageMaker reads training metrics from the job log with ``metric_definitions`` regexes (for tuning
objectives and CloudWatch); the local executor does the same. Keeping the writer and the regexes
in one module means the two cannot drift apart.
"""

from __future__ import annotations

import re

CNN_METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": "train:loss", "Regex": r"train_loss=([0-9.eE+-]+);"},
    {"Name": "validation:loss", "Regex": r"val_loss=([0-9.eE+-]+);"},
    {"Name": "validation:accuracy", "Regex": r"val_accuracy=([0-9.eE+-]+);"},
    {"Name": "epoch", "Regex": r"epoch=([0-9]+);"},
]

XGBOOST_METRIC_DEFINITIONS: list[dict[str, str]] = [
    {"Name": "train:mlogloss", "Regex": r"train_loss=([0-9.eE+-]+);"},
    {"Name": "validation:mlogloss", "Regex": r"val_loss=([0-9.eE+-]+);"},
    {"Name": "validation:accuracy", "Regex": r"val_accuracy=([0-9.eE+-]+);"},
]

OBJECTIVE_METRIC = "validation:accuracy"


def format_metrics_line(**values: float) -> str:
    """``metrics: epoch=3; train_loss=0.1234; val_loss=0.0456; val_accuracy=0.9876;`` (order kept)."""
    parts = []
    for key, value in values.items():
        parts.append(f"{key}={value};" if isinstance(value, int) else f"{key}={value:.6f};")
    return "metrics: " + " ".join(parts)


def parse_metrics(log_text: str, definitions: list[dict[str, str]]) -> dict[str, list[float]]:
    """Every value each regex finds in a log, in order (what SageMaker would chart)."""
    found: dict[str, list[float]] = {}
    for definition in definitions:
        values = [float(m) for m in re.findall(definition["Regex"], log_text)]
        if values:
            found[definition["Name"]] = values
    return found
