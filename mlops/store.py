"""The local store: S3 emulated on disk and one SQLite database, under MLOPS_HOME (default ./.mlops).

Shared by the executor, the local Model Registry and the local endpoint.

Layout (see ../shared/DESIGN.md): ``s3/BUCKET/KEY`` for objects, ``mlops.db`` for executions,
steps, metrics and the Model Registry, ``executions/<id>/<step>/`` for step working folders.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from training.atomic import atomic_write_bytes, staged_dir

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


# --- objects ---------------------------------------------------------------------------------------------
# S3 semantics the executor needs: a URI names one object or a prefix (a folder here). Readers must never
# see half-written objects, so every write goes to a temporary sibling and is renamed into place.


def exists(uri: str) -> bool:
    """True when the URI names an object or a non-empty prefix in the store."""
    path = s3_uri_to_path(uri)
    return path.is_file() or (path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()))


def read_bytes(uri: str) -> bytes:
    path = s3_uri_to_path(uri)
    if not path.is_file():
        raise FileNotFoundError(f"{uri}: no such object in the local store ({path})")
    return path.read_bytes()


def put_bytes(uri: str, data: bytes) -> Path:
    return atomic_write_bytes(s3_uri_to_path(uri), data)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (free for large datasets) when on one filesystem, else copy; never partial."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _read_only(path: Path) -> Path:
    os.chmod(path, 0o444)
    return path


def download(uri: str, destination: Path) -> list[Path]:
    """Copy an object or every object under a prefix into ``destination`` (S3Prefix download semantics).

    An object lands as ``destination/<basename>``; a prefix keeps its relative layout. Files are hard links
    into the store where possible (free for large datasets; store writes replace files, never edit them)
    and are made read-only, so a job that tries to edit an input in place fails loudly instead of
    silently changing the stored object.
    """
    source = s3_uri_to_path(uri)
    destination.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        target = destination / source.name
        _link_or_copy(source, target)
        return [_read_only(target)]
    if not source.is_dir():
        raise FileNotFoundError(f"{uri}: nothing at this S3 URI in the local store ({source})")
    copied = []
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            target = destination / path.relative_to(source)
            _link_or_copy(path, target)
            copied.append(_read_only(target))
    if not copied:
        raise FileNotFoundError(f"{uri}: the prefix is empty in the local store ({source})")
    return copied


def upload_dir(source: Path, uri: str) -> list[str]:
    """Upload every file under ``source`` to the prefix ``uri``; the prefix appears complete or not at all."""
    target = s3_uri_to_path(uri)
    if target.is_file():
        raise FileExistsError(f"{uri}: an object exists where a prefix is expected")
    uris = []
    with staged_dir(target) as staging:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                relative = path.relative_to(source)
                _link_or_copy(path, staging / relative)
                uris.append(uri.rstrip("/") + "/" + relative.as_posix())
    return uris


def upload_file(source: Path, uri: str) -> str:
    _link_or_copy(source, s3_uri_to_path(uri))
    return uri
