"""Upload the job code bundle and the shipped dataset: to S3 with boto3, or into the local store.

The bundle itself (what it holds, its content hash, its URIs) is defined with the pipeline in
:mod:`pipelines.source_bundle`; uploading is a separate, explicit step, so building a definition needs no network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from mlops.store import parse_s3_uri, s3_uri_to_path
from pipelines.source_bundle import PROJECT_ROOT, TARBALL_NAME, SourceBundle, StagedCode
from training.atomic import atomic_write_bytes


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
    try:
        return s3_client.head_object(Bucket=bucket, Key=key)["ContentLength"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def stage_local(bundle: SourceBundle, staged: StagedCode) -> list[Path]:
    """Write the bundle into the local store (MLOPS_HOME), each file atomically, tarball last."""
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
    written = []
    for path in dataset_files(local_dir):
        bucket, key = _prefix_key(uri, path.name)
        target = s3_uri_to_path(f"s3://{bucket}/{key}")
        if target.is_file() and target.stat().st_size == path.stat().st_size:
            continue
        written.append(atomic_write_bytes(target, path.read_bytes()))
    return written
