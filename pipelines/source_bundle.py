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

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Exactly the code that runs inside SageMaker containers: the job scripts, and the inference handlers that
# training jobs copy into model.tar.gz's code/ and evaluate.py scores the models through. Host code (the
# mlops package) never rides along, so editing it cannot change the code URI or any step's cache key.
PACKAGES = ("training", "inference")
# The containers install requirements.txt from the root of the code folder; the job's own lives in training/.
ROOT_FILES = {"training/requirements.txt": "requirements.txt"}
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
        for path in found:
            relative = path.relative_to(project_root).as_posix()
            files.append((ROOT_FILES.get(relative, relative), path.read_bytes()))
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
