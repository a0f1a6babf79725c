"""The normalised definition must match tests/snapshots/pipeline_definition.json (the PyTorch build) and
pipeline_definition_tensorflow.json (``--framework tensorflow``), so every change to the pipeline shows up in
review as a diff of those files.

After an intended change, regenerate the snapshot and commit it with the change:

    MLOPS_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/pipelines/test_snapshot.py

(the same JSON as ``mlops --bucket mlops-local definition --normalised`` with MLOPS_ROLE_ARN unset).
Normalising replaces only the content hash of the code bundle and timestamps, so editing training/
does not churn the snapshot but any change to steps, arguments or parameters does.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from mlops.definition.build import build_definition, normalise, to_json
from mlops.definition.config import LOCAL_BUCKET, LOCAL_ROLE_ARN, PipelineConfig

SNAPSHOTS = {"pytorch": Path(__file__).parent / "snapshots" / "pipeline_definition.json",
             "tensorflow": Path(__file__).parent / "snapshots" / "pipeline_definition_tensorflow.json"}
CONFIG = PipelineConfig(region="us-east-1", role=LOCAL_ROLE_ARN, bucket=LOCAL_BUCKET,
                        pipeline_name="image-classification", model_package_group="image-classification")


@pytest.mark.parametrize("framework", sorted(SNAPSHOTS))
def test_definition_matches_snapshot(framework: str):
    SNAPSHOT = SNAPSHOTS[framework]
    current = to_json(normalise(build_definition(replace(CONFIG, framework=framework))))
    if os.environ.get("MLOPS_UPDATE_SNAPSHOTS") == "1":
        from training.atomic import atomic_write_text

        atomic_write_text(SNAPSHOT, current)
    assert SNAPSHOT.is_file(), f"{SNAPSHOT} is missing: run with MLOPS_UPDATE_SNAPSHOTS=1 to create it"
    expected = SNAPSHOT.read_text()
    if current != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), current.splitlines(True),
                                            "snapshot", "current", n=2))
        raise AssertionError(f"the pipeline definition changed (MLOPS_UPDATE_SNAPSHOTS=1 to accept):\n{diff[:6000]}")
    assert json.loads(expected)["Steps"]
    assert "<code-hash>" in expected
