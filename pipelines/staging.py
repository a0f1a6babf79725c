"""Content-hashed source bundles for the job code (the ``training/`` and ``inference/`` packages).

Why content hashing: the definition names the code by ``s3://BUCKET/PREFIX/code/<sha256>/...``, so
the same code always gives the same definition (step caching keeps hitting, aws/sagemaker-python-sdk
#2736), and changed code gives a new URI (no stale cache hit). The hash is computed from the files
alone, so building a definition needs no network; uploading is a separate, explicit step.

Two layouts are staged under one hash, both with ``training/`` (and ``inference/``) at their root:
- ``sourcedir.tar.gz``: what training jobs (script mode) download and extract;
- ``source/training/*.py``: the same files unpacked, given to processing jobs as a ProcessingInput
  (processing containers do not extract archives).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# training/ holds the job scripts; inference/ rides along because training jobs copy its handlers into
# model.tar.gz's code/ and evaluate.py scores the models through them.
PACKAGES = ("training", "inference")
TARBALL_NAME = "sourcedir.tar.gz"
SOURCE_FOLDER = "source"
FIXED_MTIME = 0


@dataclass(frozen=True)
class SourceBundle:
    """The job code: archive paths (``training/x.py``) with their bytes, and the content hash."""

    files: tuple[tuple[str, bytes], ...]
    digest: str

    def tarball(self) -> bytes:
        """A deterministic tar.gz: sorted entries, fixed mtimes, owners and modes, no gzip timestamp."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for directory in sorted({str(Path(p).parent) for p, _ in self.files}):
                tar.addfile(_tarinfo(directory, tarfile.DIRTYPE, 0o755, 0))
            for path, data in self.files:
                tar.addfile(_tarinfo(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        out = io.BytesIO()
        with gzip.GzipFile(fileobj=out, mode="wb", mtime=FIXED_MTIME, compresslevel=9, filename="") as gz:
            gz.write(raw.getvalue())
        return out.getvalue()


def _tarinfo(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _bundled(relative: Path) -> bool:
    if "__pycache__" in relative.parts or any(part.startswith(".") for part in relative.parts):
        return False
    return relative.suffix == ".py" or fnmatch.fnmatch(relative.name, "requirements*.txt")


def collect_bundle(project_root: Path = PROJECT_ROOT, packages: tuple[str, ...] = PACKAGES) -> SourceBundle:
    """Read the packages' ``.py`` and ``requirements*.txt`` files (no caches, no data); hash paths plus contents."""
    files = []
    for package in packages:
        package_dir = project_root / package
        if not package_dir.is_dir():
            raise FileNotFoundError(f"{package_dir}: job code package not found (expected the '{package}/' folder)")
        found = [path for path in package_dir.rglob("*") if path.is_file() and _bundled(path.relative_to(project_root))]
        if not any(path.suffix == ".py" for path in found):
            raise FileNotFoundError(f"{package_dir}: no .py files to bundle")
        files.extend((path.relative_to(project_root).as_posix(), path.read_bytes()) for path in found)
    files.sort()
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return SourceBundle(files=tuple(files), digest=digest.hexdigest())


@dataclass(frozen=True)
class StagedCode:
    """Where one bundle lives in S3 (or in the local store under the same URIs)."""

    bucket: str
    prefix: str  # key prefix ending in the hash, no trailing slash

    @property
    def tarball_uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{TARBALL_NAME}"

    @property
    def source_uri(self) -> str:
        """Prefix of the unpacked files (ends with '/'), whose root holds ``training/``."""
        return f"s3://{self.bucket}/{self.prefix}/{SOURCE_FOLDER}/"

    def objects(self, bundle: SourceBundle) -> dict[str, bytes]:
        """Every key to write for this bundle, with its bytes."""
        keys = {f"{self.prefix}/{TARBALL_NAME}": bundle.tarball()}
        for name, data in bundle.files:
            keys[f"{self.prefix}/{SOURCE_FOLDER}/{name}"] = data
        return keys


def code_location(bucket: str, key_prefix: str, bundle: SourceBundle) -> StagedCode:
    """``s3://{bucket}/{key_prefix}/code/{hash}/``: pure, used when building the definition."""
    key_prefix = key_prefix.strip("/")
    prefix = f"{key_prefix}/code/{bundle.digest}" if key_prefix else f"code/{bundle.digest}"
    return StagedCode(bucket=bucket, prefix=prefix)


def stage_to_s3(bundle: SourceBundle, staged: StagedCode, s3_client: Any) -> list[str]:
    """Upload the bundle with boto3; objects already there (same hash, same bytes) are skipped.

    Returns the keys written. The tarball is written last, so its presence means the bundle is complete.
    """
    written = []
    objects = staged.objects(bundle)
    tar_key = f"{staged.prefix}/{TARBALL_NAME}"
    if _s3_size(s3_client, staged.bucket, tar_key) is not None:
        return written
    for key in sorted(objects, key=lambda k: k == tar_key):
        s3_client.put_object(Bucket=staged.bucket, Key=key, Body=objects[key])
        written.append(key)
    return written


def _s3_size(s3_client: Any, bucket: str, key: str) -> int | None:
    """Size of an object, or None when there is none (other errors propagate)."""
    from botocore.exceptions import ClientError

    try:
        return s3_client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def stage_local(bundle: SourceBundle, staged: StagedCode) -> list[Path]:
    """Write the bundle into the local store (MLOPS_HOME), each file atomically, tarball last."""
    from pipelines.local.store import s3_uri_to_path
    from training.atomic import atomic_write_bytes

    written = []
    objects = staged.objects(bundle)
    tar_key = f"{staged.prefix}/{TARBALL_NAME}"
    tar_path = s3_uri_to_path(f"s3://{staged.bucket}/{tar_key}")
    if tar_path.is_file():
        return written
    for key in sorted(objects, key=lambda k: k == tar_key):
        written.append(atomic_write_bytes(s3_uri_to_path(f"s3://{staged.bucket}/{key}"), objects[key]))
    return written


# ---------------------------------------------------------------------------- dataset
DATASET_DIR = PROJECT_ROOT / "data" / "mnist"
DATASET_FILES = ("SHA256SUMS", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def dataset_files(local_dir: Path = DATASET_DIR) -> list[Path]:
    """The shipped dataset files the Preprocess step reads (checksums first)."""
    files = [local_dir / name for name in DATASET_FILES]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset files missing: {', '.join(missing)}")
    return files


def _prefix_key(uri: str, name: str) -> tuple[str, str]:
    from pipelines.local.store import parse_s3_uri

    bucket, key = parse_s3_uri(uri)
    key = key.rstrip("/")
    return bucket, f"{key}/{name}" if key else name


def stage_dataset_to_s3(local_dir: Path, uri: str, s3_client: Any) -> list[str]:
    """Upload each dataset file under the ``uri`` prefix unless an object of the same size is there."""
    written = []
    for path in dataset_files(local_dir):
        bucket, key = _prefix_key(uri, path.name)
        if _s3_size(s3_client, bucket, key) == path.stat().st_size:
            continue
        with path.open("rb") as handle:
            s3_client.put_object(Bucket=bucket, Key=key, Body=handle)
        written.append(f"s3://{bucket}/{key}")
    return written


def stage_dataset_local(local_dir: Path, uri: str) -> list[Path]:
    """Copy the dataset files into the local store under ``uri`` (atomically) unless already there."""
    from pipelines.local.store import s3_uri_to_path
    from training.atomic import atomic_write_bytes

    written = []
    for path in dataset_files(local_dir):
        bucket, key = _prefix_key(uri, path.name)
        target = s3_uri_to_path(f"s3://{bucket}/{key}")
        if target.is_file() and target.stat().st_size == path.stat().st_size:
            continue
        written.append(atomic_write_bytes(target, path.read_bytes()))
    return written
