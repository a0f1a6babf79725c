"""Model Registry with approvals: one interface over the local SQLite registry and SageMaker's.

Both return the same records, keyed with SageMaker's DescribeModelPackage field names, plus the derived
fields an approver needs (``Metrics``, ``ApprovedBy``, ``ApprovalHistory``); see :mod:`mlops.registry.base`.
"""

from __future__ import annotations

from typing import Any

from mlops.registry.base import APPROVED, PENDING, REJECTED, STATUSES, RegistryError
from mlops.registry.local import LocalRegistry
from mlops.registry.sagemaker import SageMakerRegistry

__all__ = ["APPROVED", "PENDING", "REJECTED", "STATUSES", "LocalRegistry", "RegistryError", "SageMakerRegistry",
           "get_registry"]


def get_registry(target: str = "local", **kwargs: Any) -> LocalRegistry | SageMakerRegistry:
    """The registry for ``--target local|sagemaker``."""
    if target == "local":
        return LocalRegistry(**kwargs)
    if target == "sagemaker":
        return SageMakerRegistry(**kwargs)
    raise RegistryError(f"unknown registry target {target!r}; expected local or sagemaker")
