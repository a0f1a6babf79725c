"""Read IDX image/label files (gzip or raw) and the preprocessed split archives.

IDX is the format of MNIST, Fashion-MNIST, EMNIST and KMNIST; nothing here is MNIST-specific.
Every check failure raises :class:`DatasetError` naming the file and what was expected, so a job
stops with a message a person can act on.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# IDX type codes (third byte of the magic number) -> numpy big-endian dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """Input data that does not meet the contract; the message names the file and the problem."""


@dataclass(frozen=True)
class Split:
    """One split held in memory: images (N, H, W) and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (gzip or raw) into a native-endian numpy array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: {len(data)} bytes, too short for an IDX header (expected at least 4)")
    zero1, zero2, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero1 != 0 or zero2 != 0 or type_code not in IDX_DTYPES or ndim == 0:
        raise DatasetError(
            f"{path}: bad IDX magic number 0x{data[:4].hex()} "
            f"(expected 0x0000TTDD with type TT in {sorted(hex(t) for t in IDX_DTYPES)} and DD >= 1 dimensions)"
        )
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise DatasetError(f"{path}: header declares {ndim} dimensions but the file ends at byte {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header_end])
    dtype = IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_end
    if actual != expected:
        raise DatasetError(
            f"{path}: shape {shape} of {dtype.name} needs {expected} data bytes, found {actual} (truncated or corrupt file)"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx_split(images_path: str | Path, labels_path: str | Path, num_classes: int) -> Split:
    """Read an images/labels IDX pair and check they agree with each other and the class range."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DatasetError(f"{images_path}: expected a 3-D image array (N, H, W), found shape {images.shape}")
    if labels.ndim != 1:
        raise DatasetError(f"{labels_path}: expected a 1-D label array (N,), found shape {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels (expected equal counts)"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{images_path}: no images (expected at least one)")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DatasetError(
            f"{labels_path}: label {int(labels[first])} at index {first} is outside the class range 0..{num_classes - 1} "
            f"({int(bad.sum())} such labels)"
        )
    return Split(images=images, labels=labels.astype(np.int64))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: str | Path, sums_file: str = "SHA256SUMS") -> dict[str, str]:
    """Check every file listed in ``folder/SHA256SUMS`` (``sha256sum`` format); return name -> digest.

    A folder without a sums file is accepted (user data need not ship one); a mismatch is an error.
    """
    folder = Path(folder)
    listing = folder / sums_file
    if not listing.is_file():
        return {}
    verified: dict[str, str] = {}
    for line_no, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise DatasetError(f"{listing}:{line_no}: expected '<sha256>  <file name>', found {line!r}")
        expected, name = parts[0].lower(), parts[1].lstrip("*")
        target = folder / name
        if not target.is_file():
            raise DatasetError(f"{listing}:{line_no}: listed file {target} is missing")
        actual = sha256_file(target)
        if actual != expected:
            raise DatasetError(f"{target}: sha256 {actual} does not match {expected} listed in {listing}")
        verified[name] = actual
    return verified


def find_idx_pair(folder: str | Path, prefix: str) -> tuple[Path, Path]:
    """Locate ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]`` in a folder."""
    folder = Path(folder)
    found = []
    for kind, dims in (("images", 3), ("labels", 1)):
        stem = f"{prefix}-{kind}-idx{dims}-ubyte"
        candidates = [folder / f"{stem}.gz", folder / stem]
        match = next((c for c in candidates if c.is_file()), None)
        if match is None:
            raise DatasetError(f"{folder}: missing {stem}.gz (or {stem}) for the '{prefix}' split")
        found.append(match)
    return found[0], found[1]


# --- preprocessed splits (written by preprocess.py, read by training and evaluation) ---

SPLIT_FILE = "{name}.npz"
MANIFEST_FILE = "manifest.json"


def load_split(folder: str | Path, name: str) -> Split:
    """Load a preprocessed split (``<name>.npz`` with arrays ``images`` and ``labels``) from a channel folder.

    Archives are opened with ``allow_pickle=False``: they are data, never code.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"channel folder {folder} for split '{name}' does not exist (missing channel?)")
    path = folder / SPLIT_FILE.format(name=name)
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())
        raise DatasetError(f"{path}: split file not found (folder holds {present or 'nothing'})")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except KeyError as exc:
        raise DatasetError(f"{path}: expected arrays 'images' and 'labels' ({exc})") from exc
    except (ValueError, OSError, zlib.error) as exc:
        raise DatasetError(f"{path}: unreadable split archive ({exc})") from exc
    if len(labels) == 0:
        raise DatasetError(f"{path}: split '{name}' is empty (expected at least one example)")
    if len(images) != len(labels):
        raise DatasetError(f"{path}: {len(images)} images but {len(labels)} labels")
    return Split(images=images, labels=labels.astype(np.int64))


def load_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found (expected beside the split written by preprocess.py)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: invalid JSON ({exc})") from exc
