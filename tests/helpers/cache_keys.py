"""The executor's cache key of every job step of the real definition, computed without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlops.definition.build import stabilise
from mlops.definition.grammar import EXECUTION_VARIABLES
from mlops.definition.model import parse
from mlops.local.engine import CACHEABLE, cache_key
from mlops.local.expressions import Context
from pipelines.image_classification.pipeline import get_pipeline
from pipelines.image_classification.session import quiet_sdk
from pipelines.source_bundle import collect_bundle


class AnyProperties(dict):
    """Step properties in which every path exists and reads back as the path itself."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: object) -> AnyProperties:
        return AnyProperties(path=f"{dict.get(self, 'path')}.{key}")


def cache_keys(project_root: Path, overrides: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
    """(bundle digest, {step: key}) for the definition built over ``project_root``'s job code."""
    bundle = collect_bundle(project_root)
    pipeline = get_pipeline(role="arn:aws:iam::000000000000:role/r", default_bucket="bucket", bundle=bundle)
    with quiet_sdk():
        definition = parse(stabilise(json.loads(pipeline.definition()))).check()
    ctx = Context(parameters=definition.resolve_parameters(overrides or {}),
                  execution={name: f"{{{{Execution.{name}}}}}" for name in EXECUTION_VARIABLES},
                  step_properties=lambda step: AnyProperties(path=step),
                  property_file=lambda step, name: AnyProperties(path=f"{step}.{name}"))
    keys = {name: cache_key(step, ctx) for name, step in definition.steps.items() if step.type in CACHEABLE}
    return bundle.digest, keys
