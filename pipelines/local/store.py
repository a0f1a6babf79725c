"""The local store: S3 emulated on disk and one SQLite database, under MLOPS_HOME (default ./.mlops).

Layout (see ../shared/DESIGN.md): ``s3/BUCKET/KEY`` for objects, ``mlops.db`` for executions,
steps, metrics and the Model Registry, ``executions/<id>/<step>/`` for step working folders.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_HOME = ".mlops"
DB_NAME = "mlops.db"


def mlops_home() -> Path:
    """Root of the local store: $MLOPS_HOME, else .mlops in the working directory."""
    return Path(os.environ.get("MLOPS_HOME") or DEFAULT_HOME).resolve()


def s3_root() -> Path:
    return mlops_home() / "s3"


def db_path() -> Path:
    return mlops_home() / DB_NAME


def executions_root() -> Path:
    return mlops_home() / "executions"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into (bucket, key); anything else is a clear error."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://BUCKET/KEY URI")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_uri_to_path(uri: str) -> Path:
    """Where the local store keeps an S3 object or prefix; refuses keys that escape the bucket."""
    bucket, key = parse_s3_uri(uri)
    root = (s3_root() / bucket).resolve()
    target = (root / key).resolve() if key else root
    if target != root and root not in target.parents:
        raise ValueError(f"{uri!r}: key escapes the bucket folder")
    return target


def connect(path: Path | None = None) -> sqlite3.Connection:
    """Open the store database with WAL and a busy timeout, so concurrent executions can share it."""
    path = path or db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn
