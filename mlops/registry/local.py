"""The Model Registry in the local store's SQLite database (tables created on first use)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from mlops import store
from mlops.registry.base import (
    JSON_FIELDS,
    PENDING,
    RegistryBase,
    RegistryError,
    check_transition,
    default_region,
    group_arn,
    now_utc,
    package_arn,
    validate_create_request,
)

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
CREATE TABLE IF NOT EXISTS smoke_tests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    stage TEXT NOT NULL,
    result TEXT NOT NULL CHECK (result IN ('Passed', 'Failed')),
    tester TEXT NOT NULL,
    endpoint TEXT,
    summary TEXT,
    time TEXT NOT NULL,
    FOREIGN KEY (group_name, version) REFERENCES model_packages(group_name, version)
);
CREATE TABLE IF NOT EXISTS gate_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name TEXT NOT NULL,
    version INTEGER NOT NULL,
    stage TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('Approved', 'Rejected')),
    approver TEXT NOT NULL,
    comment TEXT NOT NULL,
    time TEXT NOT NULL,
    FOREIGN KEY (group_name, version) REFERENCES model_packages(group_name, version)
);
"""


class LocalRegistry(RegistryBase):
    """The Model Registry in the local store's SQLite database (tables created on first use)."""

    def __init__(self, db_path: Path | None = None) -> None:
        self.db_path = Path(db_path) if db_path else store.db_path()
        self.region = default_region()
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
        now = now_utc().isoformat()
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
        now = now_utc().isoformat()
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

    def _append_stage_event(self, record: dict[str, Any], kind: str, entry: dict[str, Any]) -> dict[str, Any]:
        group, version = record["ModelPackageGroupName"], record["ModelPackageVersion"]
        with self._connect() as conn:
            if kind == "smoke":
                conn.execute("INSERT INTO smoke_tests(group_name, version, stage, result, tester, endpoint, summary,"
                             " time) VALUES (?,?,?,?,?,?,?,?)",
                             (group, version, entry["Stage"], entry["Result"], entry["By"], entry.get("Endpoint"),
                              entry.get("Summary"), entry["Time"].isoformat()))
            else:
                conn.execute("INSERT INTO gate_decisions(group_name, version, stage, decision, approver, comment, time)"
                             " VALUES (?,?,?,?,?,?,?)",
                             (group, version, entry["Stage"], entry["Decision"], entry["By"], entry["Comment"],
                              entry["Time"].isoformat()))
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
        for field in JSON_FIELDS:
            record[field] = request.get(field)
        history = conn.execute(
            "SELECT previous_status, status, approver, comment, time FROM approval_history"
            " WHERE group_name = ? AND version = ? ORDER BY id", (row["group_name"], row["version"])).fetchall()
        record["ApprovalHistory"] = [
            {"Status": h["status"], "PreviousStatus": h["previous_status"], "By": h["approver"],
             "Time": datetime.fromisoformat(h["time"]), "Comment": h["comment"]} for h in history
        ]
        key = (row["group_name"], row["version"])
        record["SmokeTests"] = [
            {"Stage": t["stage"], "Result": t["result"], "By": t["tester"], "Time": datetime.fromisoformat(t["time"]),
             "Endpoint": t["endpoint"], "Summary": t["summary"]}
            for t in conn.execute("SELECT * FROM smoke_tests WHERE group_name = ? AND version = ? ORDER BY id", key)
        ]
        record["GateHistory"] = [
            {"Stage": g["stage"], "Decision": g["decision"], "By": g["approver"],
             "Time": datetime.fromisoformat(g["time"]), "Comment": g["comment"]}
            for g in conn.execute("SELECT * FROM gate_decisions WHERE group_name = ? AND version = ? ORDER BY id", key)
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
