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
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.local import store

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

_JSON_FIELDS = ("InferenceSpecification", "ModelMetrics", "MetadataProperties", "CustomerMetadataProperties",
                "DriftCheckBaselines")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_package_groups (
    name TEXT PRIMARY KEY,
    arn TEXT NOT NULL,
    description TEXT,
    creation_time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS model_packages (
    group_name TEXT NOT NULL REFERENCES model_package_groups(name),
    version INTEGER NOT NULL,
    arn TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    approval_description TEXT,
    description TEXT,
    request_json TEXT NOT NULL,
    creation_time TEXT NOT NULL,
    last_modified_time TEXT,
    PRIMARY KEY (group_name, version)
);
CREATE TABLE IF NOT EXISTS approval_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    previous_status TEXT NOT NULL,
    status TEXT NOT NULL,
    approver TEXT NOT NULL,
    comment TEXT,
    time TEXT NOT NULL,
    FOREIGN KEY (group_name, version) REFERENCES model_packages(group_name, version)
);
CREATE INDEX IF NOT EXISTS approval_history_package ON approval_history(group_name, version);
"""


class RegistryError(Exception):
    """A registry request that cannot be honoured (unknown package, invalid transition, bad request)."""


def _now() -> datetime:
    return datetime.now(UTC)


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def package_arn(group: str, version: int, region: str | None = None, account: str = ACCOUNT_ID) -> str:
    """SageMaker's ARN shape (resource names lower-cased, as SageMaker does)."""
    return f"arn:aws:sagemaker:{region or _region()}:{account}:model-package/{group.lower()}/{version}"


def group_arn(group: str, region: str | None = None, account: str = ACCOUNT_ID) -> str:
    return f"arn:aws:sagemaker:{region or _region()}:{account}:model-package-group/{group.lower()}"


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
    import botocore.session
    from botocore.validate import ParamValidator

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


def _history_value(entry: dict[str, Any]) -> str:
    """One history entry as a CustomerMetadataProperties value SageMaker accepts (charset, 256 chars)."""
    head = (f"status={entry['Status']} from={entry['PreviousStatus']} by={_SM_VALUE_BAD.sub('_', entry['By'])} "
            f"at={entry['Time'].strftime('%Y-%m-%dT%H:%M:%SZ')}")
    comment = " ".join(_SM_VALUE_BAD.sub(" ", entry.get("Comment") or "").split())
    value = f"{head} comment={comment}" if comment else head
    return value[:256]


def _parse_history_value(value: str) -> dict[str, Any]:
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


class _RegistryBase:
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


class LocalRegistry(_RegistryBase):
    """The Model Registry in the local store's SQLite database (tables created on first use)."""

    def __init__(self, db_path: Path | None = None) -> None:
        self.db_path = Path(db_path) if db_path else store.db_path()
        self.region = _region()
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = store.connect(self.db_path)
        try:
            yield conn
        finally:
            conn.close()

    def read_evaluation(self, uri: str) -> dict[str, Any]:
        path = store.s3_uri_to_path(uri) if uri.startswith("s3://") else Path(uri.removeprefix("file://"))
        return json.loads(path.read_text(encoding="utf-8"))

    # -- writing -------------------------------------------------------------------------------------------
    def create_model_package(self, request: dict[str, Any]) -> dict[str, Any]:
        """Register a model version like CreateModelPackage; the group is created when missing."""
        validate_create_request(request)
        group = request["ModelPackageGroupName"]
        status = request.get("ModelApprovalStatus", PENDING)
        now = _now().isoformat()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")  # serialises version allocation between concurrent executions
            try:
                conn.execute(
                    "INSERT OR IGNORE INTO model_package_groups(name, arn, description, creation_time) VALUES (?,?,?,?)",
                    (group, group_arn(group, self.region), None, now),
                )
                row = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM model_packages WHERE group_name = ?",
                                   (group,)).fetchone()
                version = int(row[0])
                arn = package_arn(group, version, self.region)
                conn.execute(
                    "INSERT INTO model_packages(group_name, version, arn, status, approval_description, description,"
                    " request_json, creation_time, last_modified_time) VALUES (?,?,?,?,?,?,?,?,?)",
                    (group, version, arn, status, None, request.get("ModelPackageDescription"),
                     json.dumps(request, sort_keys=True), now, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return {"ModelPackageArn": arn, "ModelPackageVersion": version, "ModelPackageGroupName": group,
                "ModelApprovalStatus": status}

    def _transition(self, record: dict[str, Any], target: str, approver: str, comment: str | None) -> dict[str, Any]:
        group, version = record["ModelPackageGroupName"], record["ModelPackageVersion"]
        now = _now().isoformat()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = conn.execute("SELECT status FROM model_packages WHERE group_name = ? AND version = ?",
                                       (group, version)).fetchone()["status"]
                check_transition(current, target, comment)  # re-checked inside the lock: no lost decisions
                conn.execute(
                    "UPDATE model_packages SET status = ?, approval_description = ?, last_modified_time = ?"
                    " WHERE group_name = ? AND version = ?",
                    (target, comment, now, group, version),
                )
                conn.execute(
                    "INSERT INTO approval_history(group_name, version, previous_status, status, approver, comment, time)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (group, version, current, target, approver, comment, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.describe_model_package(group, version)

    # -- reading -------------------------------------------------------------------------------------------
    def _record(self, conn: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
        request = json.loads(row["request_json"])
        record: dict[str, Any] = {
            "ModelPackageGroupName": row["group_name"],
            "ModelPackageVersion": row["version"],
            "ModelPackageArn": row["arn"],
            "ModelPackageDescription": row["description"],
            "ModelPackageStatus": "Completed",
            "ModelApprovalStatus": row["status"],
            "ApprovalDescription": row["approval_description"],
            "CreationTime": datetime.fromisoformat(row["creation_time"]),
            "LastModifiedTime": datetime.fromisoformat(row["last_modified_time"]) if row["last_modified_time"] else None,
        }
        for field in _JSON_FIELDS:
            record[field] = request.get(field)
        history = conn.execute(
            "SELECT previous_status, status, approver, comment, time FROM approval_history"
            " WHERE group_name = ? AND version = ? ORDER BY id", (row["group_name"], row["version"])).fetchall()
        record["ApprovalHistory"] = [
            {"Status": h["status"], "PreviousStatus": h["previous_status"], "By": h["approver"],
             "Time": datetime.fromisoformat(h["time"]), "Comment": h["comment"]} for h in history
        ]
        return self._with_metrics(record)

    def list_groups(self) -> list[str]:
        with self._connect() as conn:
            return [r["name"] for r in conn.execute("SELECT name FROM model_package_groups ORDER BY name")]

    def list_model_packages(self, group: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Packages newest first (per group), optionally one group and/or one approval status."""
        sql, args = "SELECT * FROM model_packages WHERE 1=1", []
        if group:
            sql += " AND group_name = ?"
            args.append(group)
        if status:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY group_name, version DESC"
        with self._connect() as conn:
            return [self._record(conn, row) for row in conn.execute(sql, args).fetchall()]

    def describe_model_package(self, group: str, version: int | None = None) -> dict[str, Any]:
        """One version (default: the newest) with metrics and approval history."""
        with self._connect() as conn:
            if version is None:
                row = conn.execute("SELECT * FROM model_packages WHERE group_name = ? ORDER BY version DESC LIMIT 1",
                                   (group,)).fetchone()
            else:
                row = conn.execute("SELECT * FROM model_packages WHERE group_name = ? AND version = ?",
                                   (group, int(version))).fetchone()
            if row is None:
                known = ", ".join(self.list_groups()) or "none"
                what = f"version {version} of " if version is not None else ""
                raise RegistryError(f"no model package {what}group {group!r} in {self.db_path} (groups: {known})")
            return self._record(conn, row)


class SageMakerRegistry(_RegistryBase):
    """The same operations against Amazon SageMaker's Model Registry through boto3."""

    def __init__(self, sagemaker_client: Any = None, s3_client: Any = None, sts_client: Any = None,
                 region: str | None = None) -> None:
        import boto3

        self.region = region or _region()
        self.sm = sagemaker_client or boto3.client("sagemaker", region_name=self.region)
        self._s3 = s3_client
        self._sts = sts_client

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3", region_name=self.region)
        return self._s3

    def default_approver(self) -> str:
        """The caller's IAM identity (STS), which is what CloudTrail records for the update too."""
        if self._sts is None:
            import boto3

            self._sts = boto3.client("sts", region_name=self.region)
        return self._sts.get_caller_identity()["Arn"]

    def read_evaluation(self, uri: str) -> dict[str, Any]:
        bucket, key = store.parse_s3_uri(uri)
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:  # botocore ClientError and friends: report, don't crash the listing
            raise RegistryError(str(exc)) from exc
        return json.loads(body)

    def _ensure_group(self, group: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.sm.describe_model_package_group(ModelPackageGroupName=group)
        except ClientError:
            self.sm.create_model_package_group(ModelPackageGroupName=group,
                                               ModelPackageGroupDescription="Created by mlops on first registration")

    def create_model_package(self, request: dict[str, Any]) -> dict[str, Any]:
        validate_create_request(request)
        group = request["ModelPackageGroupName"]
        self._ensure_group(group)
        arn = self.sm.create_model_package(**request)["ModelPackageArn"]
        return {"ModelPackageArn": arn, "ModelPackageVersion": int(arn.rsplit("/", 1)[1]),
                "ModelPackageGroupName": group, "ModelApprovalStatus": request.get("ModelApprovalStatus", PENDING)}

    def _record(self, described: dict[str, Any]) -> dict[str, Any]:
        record = {k: v for k, v in described.items() if k != "ResponseMetadata"}
        props = record.get("CustomerMetadataProperties") or {}
        entries = sorted((int(k[len(HISTORY_PREFIX):]), v) for k, v in props.items()
                         if k.startswith(HISTORY_PREFIX) and k[len(HISTORY_PREFIX):].isdigit())
        record["ApprovalHistory"] = [_parse_history_value(v) for _, v in entries]
        for field in ("ModelPackageDescription", "ApprovalDescription", "LastModifiedTime", *_JSON_FIELDS):
            record.setdefault(field, None)
        return self._with_metrics(record)

    def list_groups(self) -> list[str]:
        pages = self.sm.get_paginator("list_model_package_groups").paginate(SortBy="Name", SortOrder="Ascending")
        return [g["ModelPackageGroupName"] for page in pages for g in page["ModelPackageGroupSummaryList"]]

    def _summaries(self, group: str, status: str | None) -> list[dict[str, Any]]:
        kwargs: dict[str, Any] = {"ModelPackageGroupName": group, "ModelPackageType": "Versioned",
                                  "SortBy": "CreationTime", "SortOrder": "Descending"}
        if status:
            kwargs["ModelApprovalStatus"] = status
        pages = self.sm.get_paginator("list_model_packages").paginate(**kwargs)
        return [s for page in pages for s in page["ModelPackageSummaryList"]]

    def list_model_packages(self, group: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        groups = [group] if group else self.list_groups()
        records = []
        for name in groups:
            summaries = sorted(self._summaries(name, status), key=lambda s: -int(s.get("ModelPackageVersion", 0)))
            records += [self._record(self.sm.describe_model_package(ModelPackageName=s["ModelPackageArn"]))
                        for s in summaries]
        return records

    def describe_model_package(self, group: str, version: int | None = None) -> dict[str, Any]:
        if version is None:
            summaries = self._summaries(group, None)
            if not summaries:
                raise RegistryError(f"no model package in group {group!r} on SageMaker ({self.region})")
            arn = max(summaries, key=lambda s: int(s["ModelPackageVersion"]))["ModelPackageArn"]
        else:
            arn = package_arn(group, int(version), self.region, self._account())
        from botocore.exceptions import ClientError

        try:
            return self._record(self.sm.describe_model_package(ModelPackageName=arn))
        except ClientError as exc:
            raise RegistryError(f"no model package {arn}: {exc}") from exc

    def _account(self) -> str:
        described = self.sm.list_model_package_groups(MaxResults=1).get("ModelPackageGroupSummaryList") or []
        if described:
            return described[0]["ModelPackageGroupArn"].split(":")[4]
        if self._sts is None:
            import boto3

            self._sts = boto3.client("sts", region_name=self.region)
        return self._sts.get_caller_identity()["Account"]

    def _transition(self, record: dict[str, Any], target: str, approver: str, comment: str | None) -> dict[str, Any]:
        arn = record["ModelPackageArn"]
        props = dict(record.get("CustomerMetadataProperties") or {})
        history_keys = sorted(int(k[len(HISTORY_PREFIX):]) for k in props
                               if k.startswith(HISTORY_PREFIX) and k[len(HISTORY_PREFIX):].isdigit())
        number = (history_keys[-1] + 1) if history_keys else 1
        entry = {"Status": target, "PreviousStatus": record["ModelApprovalStatus"], "By": approver, "Time": _now(),
                 "Comment": comment}
        props[f"{HISTORY_PREFIX}{number}"] = _history_value(entry)
        dropped = [f"{HISTORY_PREFIX}{n}" for n in history_keys[: max(0, len(history_keys) + 1 - MAX_SAGEMAKER_HISTORY)]]
        for key in dropped:
            props.pop(key)
        kwargs: dict[str, Any] = {"ModelPackageArn": arn, "ModelApprovalStatus": target,
                                  "CustomerMetadataProperties": props}
        if comment:
            kwargs["ApprovalDescription"] = comment[:1024]
        if dropped:
            kwargs["CustomerMetadataPropertiesToRemove"] = dropped
        self.sm.update_model_package(**kwargs)
        return self._record(self.sm.describe_model_package(ModelPackageName=arn))


def get_registry(target: str = "local", **kwargs: Any) -> LocalRegistry | SageMakerRegistry:
    """The registry for ``--target local|sagemaker``."""
    if target == "local":
        return LocalRegistry(**kwargs)
    if target == "sagemaker":
        return SageMakerRegistry(**kwargs)
    raise RegistryError(f"unknown registry target {target!r}; expected local or sagemaker")
