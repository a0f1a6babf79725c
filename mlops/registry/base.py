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

The deploy stage adds two audit trails per version (``SmokeTests`` and ``GateHistory`` in every record):
- smoke tests: stage, Passed/Failed, who ran it, when, against which endpoint, and a one-line summary;
- gate decisions (the manual approval between staging and prod): stage, Approved/Rejected, who, when, comment.
Locally they are the ``smoke_tests`` and ``gate_decisions`` tables. On SageMaker they are JSON objects in the
artifact bucket (``s3://BUCKET/deploy-audit/<group>/<version>/``), not model package metadata: every
UpdateModelPackage emits a "Model Package State Change" event that still says Approved, which the deploy
pipeline's rule would take for a new approval (a smoke test restarting the pipeline that ran it).
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
AUDIT_PREFIX = "deploy-audit"

STAGES = ("staging", "prod")
GATED_STAGES = ("prod",)
STAGE_BEFORE = {"prod": "staging"}  # the stage whose smoke test a gated stage needs
PASSED, FAILED = "Passed", "Failed"
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


def latest_smoke_test(record: dict[str, Any], stage: str) -> dict[str, Any] | None:
    tests = [t for t in record.get("SmokeTests") or [] if t.get("Stage") == stage]
    return tests[-1] if tests else None


def latest_gate(record: dict[str, Any], stage: str) -> dict[str, Any] | None:
    decisions = [d for d in record.get("GateHistory") or [] if d.get("Stage") == stage]
    return decisions[-1] if decisions else None


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(value, datetime) else str(value)


def promotion_problems(record: dict[str, Any], stage: str, gate: bool = True) -> list[str]:
    """Why ``record`` may not be deployed to ``stage`` (empty: it may); ``gate=False`` leaves the gate out.

    Staging only needs Approved; prod also needs staging's smoke test passed and its gate approved.
    """
    version = record["ModelPackageVersion"]
    problems = []
    if record["ModelApprovalStatus"] != APPROVED:
        problems.append(f"version {version} is {record['ModelApprovalStatus']}, not {APPROVED}")
    before = STAGE_BEFORE.get(stage)
    if before:
        smoke = latest_smoke_test(record, before)
        if smoke is None:
            problems.append(f"version {version} has not been smoke-tested on {before} "
                            f"(mlops smoke-test --stage {before} while it serves there)")
        elif smoke["Result"] != PASSED:
            problems.append(f"version {version} failed {before}'s smoke test at {_when(smoke['Time'])}: "
                            f"{smoke.get('Summary') or 'no summary'}")
    if gate and stage in GATED_STAGES:
        decision = latest_gate(record, stage)
        if decision is None:
            problems.append(f"version {version}'s {stage} gate is not approved (no decision yet: "
                            f"mlops gate approve --stage {stage} --version {version} --comment ...)")
        elif decision["Decision"] != APPROVED:
            problems.append(f"version {version}'s {stage} gate was {decision['Decision']} by {decision['By']} at "
                            f"{_when(decision['Time'])}: {decision.get('Comment') or 'no comment'}")
    return problems


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

    # -- the deploy stage: smoke-test results and gate decisions ------------------------------------------------
    def _append_stage_event(self, record: dict[str, Any], kind: str, entry: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def record_smoke_test(self, group: str, version: int, stage: str, passed: bool, summary: str,
                          endpoint: str | None = None, by: str | None = None) -> dict[str, Any]:
        """Record a smoke test of ``version`` on ``stage`` (its audit trail); returns the updated record."""
        if stage not in STAGES:
            raise RegistryError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
        record = self.describe_model_package(group, version)
        entry = {"Stage": stage, "Result": PASSED if passed else FAILED, "By": by or self.default_approver(),
                 "Time": now_utc(), "Endpoint": endpoint, "Summary": summary}
        return self._append_stage_event(record, "smoke", entry)

    def gate_candidate(self, group: str, stage: str) -> dict[str, Any]:
        """The version a gate decides on by default: the newest Approved one that passed the stage before."""
        before = STAGE_BEFORE[stage]
        for record in self.list_model_packages(group, status=APPROVED):
            smoke = latest_smoke_test(record, before)
            if smoke and smoke["Result"] == PASSED:
                return record
        raise RegistryError(f"no Approved version of {group!r} has passed {before}'s smoke test yet; "
                            f"name one with --version")

    def decide_gate(self, group: str, stage: str, decision: str, comment: str, version: int | None = None,
                    approver: str | None = None) -> dict[str, Any]:
        """Record the manual approval (or rejection) that lets a version into ``stage``, like CodePipeline's."""
        if stage not in GATED_STAGES:
            raise RegistryError(f"stage {stage!r} has no gate; gated stages: {', '.join(GATED_STAGES)}")
        if decision not in (APPROVED, REJECTED):
            raise RegistryError(f"gate decision {decision!r} is not {APPROVED} or {REJECTED}")
        if not (comment and comment.strip()):
            raise RegistryError("a gate decision needs a --comment saying why (it is the audit trail)")
        record = self.describe_model_package(group, version) if version is not None else \
            self.gate_candidate(group, stage)
        if decision == APPROVED:
            # the order of CodePipeline's stages: nothing is approved for prod before it passed staging
            problems = promotion_problems(record, stage, gate=False)
            if problems:
                raise RegistryError(f"cannot approve the {stage} gate: " + "; ".join(problems))
        entry = {"Stage": stage, "Decision": decision, "By": approver or self.default_approver(), "Time": now_utc(),
                 "Comment": comment.strip()}
        return self._append_stage_event(record, "gate", entry)

    def check_promotable(self, record: dict[str, Any], stage: str) -> None:
        """Refuse, naming every reason, to deploy ``record`` to ``stage``."""
        problems = promotion_problems(record, stage)
        if problems:
            raise RegistryError(f"{record['ModelPackageGroupName']} version {record['ModelPackageVersion']} may "
                                f"not be deployed to {stage}: " + "; ".join(problems))
