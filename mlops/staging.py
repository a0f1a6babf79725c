"""Upload the job code bundle and the shipped dataset: to S3 with boto3, or into the local store.

The bundle itself (what it holds, its content hash, its URIs) is defined with the pipeline in
:mod:`pipelines.source_bundle`; uploading is a separate, explicit step, so building a definition needs no network.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from botocore.exceptions import ClientError

from mlops.store import parse_s3_uri, s3_uri_to_path
from pipelines.source_bundle import PROJECT_ROOT, TARBALL_NAME, SourceBundle, StagedCode
from training.atomic import atomic_write_bytes
from training.datasets import sha256_file, verify_checksums
from training.formats import check_inside


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


# ---------------------------------------------------------------------------- user data given as a local path
LOCAL_DATA_PREFIX = "data/local"
SUMS_FILE = "SHA256SUMS"


@dataclass(frozen=True)
class LocalInput:
    """Where a parameter's local path is staged: ``s3://BUCKET/<prefix>/[<name>-]<digest>/``."""

    parameter: str
    prefix: str
    named: bool = True  # the folder's name in the prefix (datasets), or the digest alone (weights)


DATA_INPUT = LocalInput("InputDataUrl", LOCAL_DATA_PREFIX)
WEIGHTS_INPUT = LocalInput("PretrainedWeightsUrl", "pretrained/local", named=False)
WEIGHTS_SUFFIXES = (".pth", ".pt")
NO_WEIGHTS_NOTE_NAME = "README.txt"
NO_WEIGHTS_NOTE = (b"No pretrained weights: PretrainedWeightsUrl's default prefix.\n"
                   b"TrainCNN's weights channel is never empty, so this note stands in for weights. With\n"
                   b"CnnArchitecture=resnet18 and no *.pth/*.pt file in the channel the network trains from scratch.\n"
                   b"Give --param PretrainedWeightsUrl=s3://.../resnet18.pth (or a local path) to fine-tune.\n")


def local_data_path(value: str, parameter: str = "InputDataUrl") -> Path | None:
    """The local path a parameter names (a plain path or a file:// URI), or None for s3:// and other URIs."""
    parsed = urlparse(value)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{parameter} {value!r}: a file:// URI must name a local path (file:///path)")
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and value[1:3] in (":\\", ":/")):  # C:\ on Windows
        return Path(value)
    return None


def local_dataset_files(source: Path, parameter: str = "InputDataUrl") -> dict[str, Path]:
    """Relative name -> file for a dataset folder (or one archive file); refuses links that leave it."""
    source = source.expanduser()
    if source.is_file():
        return {source.name: source}
    if not source.is_dir():
        raise FileNotFoundError(f"{parameter} {source}: no such file or folder")
    check_inside(source)
    files = {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)}
    if not files:
        raise FileNotFoundError(f"{parameter} {source}: the folder holds no files")
    return files


def _check_weights(source: Path, files: dict[str, Path]) -> None:
    """A weights path must hold exactly one *.pth/*.pt file, or TrainCNN would quietly train from scratch."""
    found = [name for name in files if Path(name).suffix.lower() in WEIGHTS_SUFFIXES]
    if len(found) != 1:
        raise ValueError(f"PretrainedWeightsUrl {source}: expected one *.pth or *.pt state dict file, found "
                         f"{len(found)}{': ' + ', '.join(found[:5]) if found else ''}")


def _checksums(files: dict[str, Path]) -> tuple[str, dict[str, str]]:
    """Each file's sha256 and one digest of the whole dataset (names and contents)."""
    sums = {name: sha256_file(path) for name, path in files.items()}
    whole = hashlib.sha256("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())).encode()).hexdigest()
    return whole, sums


def _sums_text(files: dict[str, Path], sums: dict[str, str]) -> bytes:
    """The folder's own SHA256SUMS when it ships one (verified), else one written here."""
    if SUMS_FILE in files:
        verify_checksums(files[SUMS_FILE].parent)
        return files[SUMS_FILE].read_bytes()
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())).encode()


def stage_local_path(source: Path, bucket: str, put_file, exists, target: LocalInput = DATA_INPUT) -> str:
    """Stage a local dataset under ``s3://bucket/data/local/<name>-<digest>/``, SHA256SUMS written last.

    The prefix is named by content, so the same data is staged once and different data never overwrites it.
    ``put_file(path, uri)``/``put_bytes(data, uri)`` and ``exists(uri)`` abstract the local store and S3.
    ``target`` says which parameter the path came from and where it goes (pretrained weights:
    ``s3://bucket/pretrained/local/<digest>/``).
    """
    files = local_dataset_files(source, target.parameter)
    if target is WEIGHTS_INPUT:
        _check_weights(source, files)
    whole, sums = _checksums(files)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", source.expanduser().resolve().name).strip("-") or "dataset"
    prefix = f"s3://{bucket}/{target.prefix}/{f'{name}-' if target.named else ''}{whole[:16]}/"
    if exists(prefix + SUMS_FILE):
        return prefix
    for relative, path in files.items():
        if relative != SUMS_FILE:
            put_file(path, prefix + relative)
    put_file(_sums_text(files, sums), prefix + SUMS_FILE)
    return prefix


def stage_local_path_local(source: Path, bucket: str, target: LocalInput = DATA_INPUT) -> str:
    """Into the local store (each file atomically, SHA256SUMS last)."""
    def put(item: Path | bytes, uri: str) -> None:
        data = item if isinstance(item, bytes) else item.read_bytes()
        atomic_write_bytes(s3_uri_to_path(uri), data)

    return stage_local_path(source, bucket, put, lambda uri: s3_uri_to_path(uri).is_file(), target)


def stage_local_path_to_s3(source: Path, bucket: str, s3_client: Any, target: LocalInput = DATA_INPUT) -> str:
    """To S3 with boto3 (SHA256SUMS last, so its presence means the prefix is complete)."""
    def put(item: Path | bytes, uri: str) -> None:
        target_bucket, key = parse_s3_uri(uri)
        if isinstance(item, bytes):
            s3_client.put_object(Bucket=target_bucket, Key=key, Body=item)
        else:
            with item.open("rb") as handle:
                s3_client.put_object(Bucket=target_bucket, Key=key, Body=handle)

    return stage_local_path(source, bucket, put, lambda uri: _s3_size(s3_client, *parse_s3_uri(uri)) is not None,
                            target)


# ---------------------------------------------------------------------------- PretrainedWeightsUrl's default
def stage_no_weights_note_local(uri: str) -> Path | None:
    """Write the README.txt note under the default weights prefix (once), so the channel is never empty."""
    bucket, key = _prefix_key(uri, NO_WEIGHTS_NOTE_NAME)
    target = s3_uri_to_path(f"s3://{bucket}/{key}")
    if target.is_file():
        return None
    return atomic_write_bytes(target, NO_WEIGHTS_NOTE)


def stage_no_weights_note_to_s3(uri: str, s3_client: Any) -> str | None:
    """The same note on S3: SageMaker refuses to start a job whose S3Prefix channel matches no object."""
    bucket, key = _prefix_key(uri, NO_WEIGHTS_NOTE_NAME)
    if _s3_size(s3_client, bucket, key) is not None:
        return None
    s3_client.put_object(Bucket=bucket, Key=key, Body=NO_WEIGHTS_NOTE)
    return f"s3://{bucket}/{key}"
