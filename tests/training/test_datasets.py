"""IDX parsing and checksum verification: the good path and every bad input the issue names."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from training.datasets import (
    DatasetError,
    find_idx_pair,
    load_split,
    read_idx,
    read_idx_split,
    verify_checksums,
)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_pair(folder: Path, images: np.ndarray, labels: np.ndarray, prefix: str = "train", gz: bool = True) -> None:
    suffix = ".gz" if gz else ""
    pack = gzip.compress if gz else (lambda b: b)
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(pack(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(pack(idx_bytes(labels)))


def test_reads_shipped_mnist_with_published_shapes_and_counts(mnist_dir: Path) -> None:
    verified = verify_checksums(mnist_dir)
    assert len(verified) == 4
    split = read_idx_split(*find_idx_pair(mnist_dir, "t10k"), num_classes=10)
    assert split.images.shape == (10000, 28, 28) and split.images.dtype == np.uint8
    assert np.bincount(split.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("gz", [True, False])
def test_reads_gzip_and_raw_files_alike(tmp_path: Path, gz: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_pair(tmp_path, images, np.array([0, 1], dtype=np.uint8), gz=gz)
    split = read_idx_split(*find_idx_pair(tmp_path, "train"), num_classes=2)
    np.testing.assert_array_equal(split.images, images)
    assert split.labels.tolist() == [0, 1]


@pytest.mark.parametrize(("type_code", "dtype"), [(0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")])
def test_reads_every_idx_element_type(tmp_path: Path, type_code: int, dtype: str) -> None:
    array = np.array([[1.5, -2.0], [3.0, 4.25]]).astype(dtype) if "f" in dtype else np.array([[1, -2], [3, 4]], dtype)
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(array, type_code))
    np.testing.assert_array_equal(read_idx(path), array.astype(np.dtype(dtype).newbyteorder("=")))


def test_truncated_gzip_names_the_file(tmp_path: Path) -> None:
    data = gzip.compress(idx_bytes(np.zeros((10, 4, 4), np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut\.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(idx_bytes(np.arange(64, dtype=np.uint8).reshape(1, 8, 8))))
    data[12:20] = b"\xff" * 8
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"bad\.gz: corrupt or truncated gzip"):
        read_idx(path)


def test_wrong_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "notidx"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 12)
    with pytest.raises(DatasetError, match=r"notidx: bad IDX magic number 0x12340803"):
        read_idx(path)


def test_unknown_element_type(tmp_path: Path) -> None:
    path = tmp_path / "weird"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\0")
    with pytest.raises(DatasetError, match="bad IDX magic number"):
        read_idx(path)


def test_truncated_payload(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((5, 4, 4), np.uint8))
    path = tmp_path / "short"
    path.write_bytes(data[:-3])
    with pytest.raises(DatasetError, match=r"short: shape \(5, 4, 4\) of uint8 needs 80 data bytes, found 77"):
        read_idx(path)


def test_image_label_count_mismatch(tmp_path: Path) -> None:
    write_pair(tmp_path, np.zeros((3, 4, 4), np.uint8), np.array([0, 1], np.uint8))
    with pytest.raises(DatasetError, match="holds 3 images but .* holds 2 labels"):
        read_idx_split(*find_idx_pair(tmp_path, "train"), num_classes=10)


def test_label_outside_class_range(tmp_path: Path) -> None:
    write_pair(tmp_path, np.zeros((3, 4, 4), np.uint8), np.array([0, 12, 1], np.uint8))
    with pytest.raises(DatasetError, match=r"label 12 at index 1 is outside the class range 0\.\.9"):
        read_idx_split(*find_idx_pair(tmp_path, "train"), num_classes=10)


def test_empty_images_file(tmp_path: Path) -> None:
    write_pair(tmp_path, np.zeros((0, 4, 4), np.uint8), np.zeros((0,), np.uint8))
    with pytest.raises(DatasetError, match="no images"):
        read_idx_split(*find_idx_pair(tmp_path, "train"), num_classes=10)


def test_missing_idx_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing t10k-images-idx3-ubyte.gz"):
        find_idx_pair(tmp_path, "t10k")


def test_checksum_mismatch(tmp_path: Path) -> None:
    (tmp_path / "a.gz").write_bytes(b"hello")
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  a.gz\n")
    with pytest.raises(DatasetError, match=r"a\.gz: sha256 .* does not match"):
        verify_checksums(tmp_path)


def test_empty_split_archive(tmp_path: Path) -> None:
    np.savez_compressed(tmp_path / "validation.npz", images=np.zeros((0, 4, 4), np.float32), labels=np.zeros(0))
    with pytest.raises(DatasetError, match="split 'validation' is empty"):
        load_split(tmp_path, "validation")


def test_missing_channel_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_split(tmp_path / "nope", "train")


def test_split_archive_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", images=np.array([object()], dtype=object), labels=np.array([0]))
    with pytest.raises(DatasetError, match="unreadable split archive"):
        load_split(tmp_path, "train")
