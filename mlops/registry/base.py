"""Model Registry with approvals: one interface over the local SQLite registry and SageMaker's.

Both classes return the same records, keyed with SageMaker's DescribeModelPackage field names
(ModelPackageGroupName, ModelPackageVersion, ModelPackageArn, ModelApprovalStatus, ApprovalDescription,
CreationTime, LastModifiedTime, InferenceSpecification, ModelMetrics, MetadataProperties, ...), plus three
derived fields the approver needs: ``Metrics`` (accuracy and baseline accuracy read from the package's
evaluation.json), ``ApprovedBy`` and ``ApprovalHistory``.

Approval history (who, when, from which status, comment):
- local: the ``approval_history`` table, one row per decision, comment in full;
- SageMaker: the latest comment is ``ApprovalDescription`` (up to 1024 characters) and every decision is a
  ``CustomerMetadataProperties`` entry ``mlops.approval.<n>`` = ``status=... from=... by=... at=... comment=...``.
  SageMaker limits those values to 256 characters of letters, digits, spaces and ``_.:/=+-@``, so the
  comment kept there is sanitised and truncated; the newest ``MAX_SAGEMAKER_HISTORY`` entries are kept.
"""

from __future__ import annotations

import getpass
import os
import re
from datetime import UTC, datetime
from typing import Any

import botocore.session
from botocore.validate import ParamValidator

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
STATUSES = (PENDING, APPROVED, REJECTED)

# from-status -> statuses it may move to. Reversing a decision needs a comment saying why.
TRANSITIONS: dict[str, tuple[str, ...]] = {PENDING: (APPROVED, REJECTED), APPROVED: (REJECTED,), REJECTED: (APPROVED,)}

ACCOUNT_ID = "000000000000"
GROUP_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
HISTORY_PREFIX = "mlops.approval."
MAX_SAGEMAKER_HISTORY = 40
_SM_VALUE_BAD = re.compile(r"[^\w .:/=+\-@]")

JSON_FIELDS = ("InferenceSpecification", "ModelMetrics", "MetadataProperties", "CustomerMetadataProperties",
                "DriftCheckBaselines")




class RegistryError(Exception):
    """A registry request that cannot be honoured (unknown package, invalid transition, bad request)."""


def now_utc() -> datetime:
    return datetime.now(UTC)


def default_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def package_arn(group: str, version: int, region: str | None = None, account: str = ACCOUNT_ID) -> str:
    """SageMaker's ARN shape (resource names lower-cased, as SageMaker does)."""
    return f"arn:aws:sagemaker:{region or default_region()}:{account}:model-package/{group.lower()}/{version}"


def group_arn(group: str, region: str | None = None, account: str = ACCOUNT_ID) -> str:
    return f"arn:aws:sagemaker:{region or default_region()}:{account}:model-package-group/{group.lower()}"


def check_transition(current: str, target: str, comment: str | None) -> None:
    """Refuse anything but PendingManualApproval -> Approved|Rejected, Approved <-> Rejected (with a comment)."""
    if target not in STATUSES or target == PENDING:
        raise RegistryError(f"target status {target!r} is not one of {APPROVED}, {REJECTED}")
    if current == target:
        raise RegistryError(f"the model package is already {current}")
    if target not in TRANSITIONS.get(current, ()):
        raise RegistryError(f"cannot move a model package from {current} to {target}")
    if current != PENDING and not (comment and comment.strip()):
        raise RegistryError(f"moving from {current} to {target} reverses a decision: give a --comment saying why")


def validate_create_request(request: dict[str, Any]) -> None:
    """Check a CreateModelPackage request against the real API shape (botocore's model, offline)."""
    if not isinstance(request, dict):
        raise RegistryError(f"CreateModelPackage request must be a dict, got {type(request).__name__}")
    group = request.get("ModelPackageGroupName")
    if not isinstance(group, str) or not GROUP_NAME_RE.match(group):
        raise RegistryError(f"ModelPackageGroupName {group!r} must match {GROUP_NAME_RE.pattern}")
    status = request.get("ModelApprovalStatus", PENDING)
    if status not in STATUSES:
        raise RegistryError(f"ModelApprovalStatus {status!r} is not one of {', '.join(STATUSES)}")
    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateModelPackage").input_shape
    report = ParamValidator().validate(request, shape)
    if report.has_errors():
        raise RegistryError(f"invalid CreateModelPackage request: {report.generate_report()}")


def evaluation_uri(package: dict[str, Any]) -> str | None:
    """Where the package's evaluation.json lives: ModelMetrics.ModelQuality.Statistics.S3Uri."""
    quality = (package.get("ModelMetrics") or {}).get("ModelQuality") or {}
    return (quality.get("Statistics") or {}).get("S3Uri")


def metrics_from_evaluation(report: dict[str, Any]) -> dict[str, float | None]:
    """Pull accuracy and the baseline's accuracy out of SageMaker's model quality format."""

    def accuracy(section: Any) -> float | None:
        try:
            return float(section["multiclass_classification_metrics"]["accuracy"]["value"])
        except (KeyError, TypeError, ValueError):
            return None

    return {"accuracy": accuracy(report), "baseline_accuracy": accuracy(report.get("baseline"))}


def history_value(entry: dict[str, Any]) -> str:
    """One history entry as a CustomerMetadataProperties value SageMaker accepts (charset, 256 chars)."""
    head = (f"status={entry['Status']} from={entry['PreviousStatus']} by={_SM_VALUE_BAD.sub('_', entry['By'])} "
            f"at={entry['Time'].strftime('%Y-%m-%dT%H:%M:%SZ')}")
    comment = " ".join(_SM_VALUE_BAD.sub(" ", entry.get("Comment") or "").split())
    value = f"{head} comment={comment}" if comment else head
    return value[:256]


def parse_history_value(value: str) -> dict[str, Any]:
    head, _, comment = value.partition(" comment=")
    fields = dict(part.split("=", 1) for part in head.split() if "=" in part)
    when = fields.get("at")
    return {
        "Status": fields.get("status"),
        "PreviousStatus": fields.get("from"),
        "By": fields.get("by"),
        "Time": datetime.strptime(when, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if when else None,
        "Comment": comment or None,
    }


class RegistryBase:
    """Shared behaviour: metrics lookup, latest-version resolution, approve/reject on top of _transition."""

    def read_evaluation(self, uri: str) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _with_metrics(self, record: dict[str, Any]) -> dict[str, Any]:
        uri = evaluation_uri(record)
        metrics: dict[str, Any] = {"accuracy": None, "baseline_accuracy": None, "source": uri}
        if uri:
            try:
                metrics.update(metrics_from_evaluation(self.read_evaluation(uri)))
            except (OSError, ValueError, RegistryError) as exc:
                metrics["error"] = f"cannot read {uri}: {exc}"
        record["Metrics"] = metrics
        history = record.get("ApprovalHistory") or []
        decided = [h for h in history if h["Status"] == record["ModelApprovalStatus"]]
        record["ApprovedBy"] = decided[-1]["By"] if decided and record["ModelApprovalStatus"] == APPROVED else None
        record["DecidedBy"] = decided[-1]["By"] if decided else None
        return record

    def list_model_packages(self, group: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError  # pragma: no cover

    def describe_model_package(self, group: str, version: int | None = None) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def _transition(self, record: dict[str, Any], target: str, approver: str, comment: str | None) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def default_approver(self) -> str:
        return os.environ.get("USER") or getpass.getuser()

    def _pick(self, group: str, version: int | None, statuses: tuple[str, ...]) -> dict[str, Any]:
        """The named version, else the newest version whose status is one of ``statuses``."""
        if version is not None:
            return self.describe_model_package(group, version)
        for record in self.list_model_packages(group):
            if record["ModelApprovalStatus"] in statuses:
                return record
        raise RegistryError(f"no model package in group {group!r} is {' or '.join(statuses)}; name one with --version")

    def approve(self, group: str, version: int | None = None, approver: str | None = None,
                comment: str | None = None) -> dict[str, Any]:
        """Approve a version (default: the newest PendingManualApproval one)."""
        record = self._pick(group, version, (PENDING,))
        check_transition(record["ModelApprovalStatus"], APPROVED, comment)
        return self._transition(record, APPROVED, approver or self.default_approver(), comment)

    def reject(self, group: str, version: int | None = None, approver: str | None = None,
               comment: str | None = None) -> dict[str, Any]:
        """Reject a version (default: the newest PendingManualApproval one)."""
        record = self._pick(group, version, (PENDING,))
        check_transition(record["ModelApprovalStatus"], REJECTED, comment)
        return self._transition(record, REJECTED, approver or self.default_approver(), comment)

    def latest_approved(self, group: str) -> dict[str, Any] | None:
        approved = self.list_model_packages(group, status=APPROVED)
        return approved[0] if approved else None
