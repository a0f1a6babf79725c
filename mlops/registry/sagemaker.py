"""The Model Registry on Amazon SageMaker, through boto3, with the same records as the local one."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime
from typing import Any

import boto3
from botocore.exceptions import ClientError

from mlops import store
from mlops.registry.base import (
    AUDIT_PREFIX,
    HISTORY_PREFIX,
    JSON_FIELDS,
    MAX_SAGEMAKER_HISTORY,
    PENDING,
    RegistryBase,
    RegistryError,
    default_region,
    history_value,
    now_utc,
    package_arn,
    parse_history_value,
    validate_create_request,
)


def _numbered(props: dict[str, str], prefix: str) -> list[tuple[int, str]]:
    """``prefix<n>`` entries of CustomerMetadataProperties, oldest first."""
    return sorted((int(k[len(prefix):]), v) for k, v in props.items()
                  if k.startswith(prefix) and k[len(prefix):].isdigit())


class SageMakerRegistry(RegistryBase):
    """The same operations against Amazon SageMaker's Model Registry through boto3."""

    def __init__(self, sagemaker_client: Any = None, s3_client: Any = None, sts_client: Any = None,
                 region: str | None = None, audit_uri: str | None = None) -> None:
        self.region = region or default_region()
        bucket = os.environ.get("MLOPS_BUCKET")
        self.audit_uri = audit_uri or (f"s3://{bucket}/{AUDIT_PREFIX}/" if bucket else None)
        self.sm = sagemaker_client or boto3.client("sagemaker", region_name=self.region)
        self._s3 = s3_client
        self._sts = sts_client

    @property
    def s3(self) -> Any:
        if self._s3 is None:
                self._s3 = boto3.client("s3", region_name=self.region)
        return self._s3

    def default_approver(self) -> str:
        """The caller's IAM identity (STS), which is what CloudTrail records for the update too."""
        if self._sts is None:
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
        record["ApprovalHistory"] = [parse_history_value(v) for _, v in _numbered(props, HISTORY_PREFIX)]
        if "ModelPackageGroupName" in record and "ModelPackageVersion" in record:
            record["SmokeTests"], record["GateHistory"] = self._stage_events(record["ModelPackageGroupName"],
                                                                             int(record["ModelPackageVersion"]))
        for field in ("ModelPackageDescription", "ApprovalDescription", "LastModifiedTime", *JSON_FIELDS):
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
        try:
            return self._record(self.sm.describe_model_package(ModelPackageName=arn))
        except ClientError as exc:
            raise RegistryError(f"no model package {arn}: {exc}") from exc

    def _account(self) -> str:
        described = self.sm.list_model_package_groups(MaxResults=1).get("ModelPackageGroupSummaryList") or []
        if described:
            return described[0]["ModelPackageGroupArn"].split(":")[4]
        if self._sts is None:
                self._sts = boto3.client("sts", region_name=self.region)
        return self._sts.get_caller_identity()["Account"]

    def _appended(self, record: dict[str, Any], prefix: str, value: str) -> dict[str, Any]:
        """UpdateModelPackage arguments that append ``value`` as the next ``prefix<n>`` entry (oldest dropped)."""
        props = dict(record.get("CustomerMetadataProperties") or {})
        numbers = [n for n, _ in _numbered(props, prefix)]
        props[f"{prefix}{(numbers[-1] + 1) if numbers else 1}"] = value
        dropped = [f"{prefix}{n}" for n in numbers[: max(0, len(numbers) + 1 - MAX_SAGEMAKER_HISTORY)]]
        for key in dropped:
            props.pop(key)
        kwargs: dict[str, Any] = {"ModelPackageArn": record["ModelPackageArn"], "CustomerMetadataProperties": props}
        if dropped:
            kwargs["CustomerMetadataPropertiesToRemove"] = dropped
        return kwargs

    def _transition(self, record: dict[str, Any], target: str, approver: str, comment: str | None) -> dict[str, Any]:
        entry = {"Status": target, "PreviousStatus": record["ModelApprovalStatus"], "By": approver, "Time": now_utc(),
                 "Comment": comment}
        kwargs = {**self._appended(record, HISTORY_PREFIX, history_value(entry)), "ModelApprovalStatus": target}
        if comment:
            kwargs["ApprovalDescription"] = comment[:1024]
        self.sm.update_model_package(**kwargs)
        return self._record(self.sm.describe_model_package(ModelPackageName=record["ModelPackageArn"]))

    # -- smoke tests and gate decisions: JSON objects in the artifact bucket (see mlops.registry.base) ----------------
    def _audit_location(self, group: str, version: int) -> tuple[str, str] | None:
        if not self.audit_uri:
            return None
        bucket, prefix = store.parse_s3_uri(self.audit_uri)
        return bucket, f"{prefix.strip('/')}/{group}/{version}/".lstrip("/")

    def _stage_events(self, group: str, version: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        location = self._audit_location(group, version)
        if location is None:
            return [], []
        bucket, prefix = location
        smoke, gates = [], []
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
            for key in keys:
                entry = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                entry["Time"] = datetime.fromisoformat(entry["Time"])
                (smoke if key.endswith("-smoke.json") else gates).append(entry)
        except ClientError as exc:
            raise RegistryError(f"cannot read the deploy audit trail under s3://{bucket}/{prefix}: {exc}") from exc
        return smoke, gates

    def _append_stage_event(self, record: dict[str, Any], kind: str, entry: dict[str, Any]) -> dict[str, Any]:
        group, version = record["ModelPackageGroupName"], int(record["ModelPackageVersion"])
        location = self._audit_location(group, version)
        if location is None:
            raise RegistryError("recording smoke tests and gate decisions on SageMaker needs the artifact bucket "
                                "(MLOPS_BUCKET): they are kept under s3://BUCKET/deploy-audit/")
        bucket, prefix = location
        key = f"{prefix}{entry['Time']:%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}-{kind}.json"
        body = json.dumps({**entry, "Time": entry["Time"].isoformat()}, indent=2).encode()
        self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        return self.describe_model_package(group, version)
