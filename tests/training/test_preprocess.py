"""preprocess.py on a slice of real MNIST, and its failure behaviour (clear error, no partial output)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.datasets import load_manifest, load_split, sha256_file


def test_slice_is_stratified_normalized_and_described(mnist_slice: Path) -> None:
    manifest = load_manifest(mnist_slice / "train")
    assert manifest["splits"]["train"]["count"] == 2700
    assert manifest["splits"]["validation"]["count"] == 300
    assert manifest["splits"]["test"]["count"] == 1000
    assert manifest["class_names"] == [str(i) for i in range(10)]
    for name in ("train", "validation", "test"):
        split = load_split(mnist_slice / name, name)
        assert split.images.dtype == np.float32 and split.images.shape[1:] == (28, 28)
        counts = manifest["splits"][name]["class_counts"]
        assert sum(counts.values()) == len(split)
        assert np.bincount(split.labels, minlength=10).tolist() == list(counts.values())
        # stratified: every class within 1.5 points of MNIST's share (digit 1 is 11.2%, digit 5 9.0%)
        shares = np.bincount(split.labels, minlength=10) / len(split)
        assert shares.min() > 0.075 and shares.max() < 0.125
        assert manifest["splits"][name]["sha256"] == sha256_file(mnist_slice / name / f"{name}.npz")
        assert json.loads((mnist_slice / name / "manifest.json").read_text()) == manifest
    train = load_split(mnist_slice / "train", "train")
    assert abs(float(train.images.mean())) < 1e-3 and abs(float(train.images.std()) - 1.0) < 1e-3
    norm = manifest["normalization"]
    assert 0.12 < norm["mean"] < 0.14 and 0.29 < norm["std"] < 0.32


def test_same_seed_same_split(mnist_slice: Path, mnist_dir: Path, tmp_path: Path, run_job_script) -> None:
    result = run_job_script("preprocess.py", ["--input-dir", str(mnist_dir), "--output-dir", str(tmp_path),
                                              "--max-train-samples", "3000", "--max-test-samples", "1000"])
    assert result.returncode == 0, result.stderr
    for name in ("train", "validation", "test"):
        assert sha256_file(tmp_path / name / f"{name}.npz") == sha256_file(mnist_slice / name / f"{name}.npz")


def _copy_mnist(mnist_dir: Path, dest: Path) -> Path:
    shutil.copytree(mnist_dir, dest)
    (dest / "SHA256SUMS").unlink()  # these tests alter files on purpose
    return dest


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate_gzip", "t10k-labels-idx1-ubyte.gz: corrupt or truncated gzip"),
        ("bad_magic", "t10k-labels-idx1-ubyte.gz: bad IDX magic number"),
        ("count_mismatch", "holds 10000 images but .*t10k-labels-idx1-ubyte.gz holds 9999 labels"),
        ("label_range", "t10k-labels-idx1-ubyte.gz: label 10 at index 0 is outside the class range 0..9"),
        ("missing_file", "missing t10k-labels-idx1-ubyte.gz"),
    ],
)
def test_bad_input_fails_cleanly(mnist_dir: Path, tmp_path: Path, run_job_script, damage: str, expected: str) -> None:
    raw = _copy_mnist(mnist_dir, tmp_path / "raw")
    target = raw / "t10k-labels-idx1-ubyte.gz"
    labels = gzip.decompress(target.read_bytes())
    if damage == "truncate_gzip":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "bad_magic":
        target.write_bytes(gzip.compress(b"\x01\x08\x00\x00" + labels[4:]))  # little-endian header
    elif damage == "count_mismatch":
        target.write_bytes(gzip.compress(labels[:4] + (9999).to_bytes(4, "big") + labels[8:-1]))
    elif damage == "label_range":
        target.write_bytes(gzip.compress(labels[:8] + bytes([10]) + labels[9:]))
    elif damage == "missing_file":
        target.unlink()
    out = tmp_path / "out"
    result = run_job_script("preprocess.py", ["--input-dir", str(raw), "--output-dir", str(out)])
    assert result.returncode != 0
    assert re.search(expected, result.stderr), result.stderr
    assert not out.exists() or not any(out.iterdir()), "a failed job left output behind"
    assert not any(p.name.startswith(".out.staging") for p in tmp_path.iterdir())


def test_checksum_mismatch_stops_before_any_output(mnist_dir: Path, tmp_path: Path, run_job_script) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(mnist_dir, raw)
    sums = (raw / "SHA256SUMS").read_text().replace("8d422c7b", "00000000")
    (raw / "SHA256SUMS").write_text(sums)
    result = run_job_script("preprocess.py", ["--input-dir", str(raw), "--output-dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert "t10k-images-idx3-ubyte.gz: sha256" in result.stderr
    assert not (tmp_path / "out").exists()


def test_validation_fraction_too_small_for_classes_is_an_empty_split(mnist_dir: Path, tmp_path: Path,
                                                                    run_job_script) -> None:
    result = run_job_script("preprocess.py", ["--input-dir", str(mnist_dir), "--output-dir", str(tmp_path / "out"),
                                              "--max-train-samples", "100", "--validation-fraction", "0.01"])
    assert result.returncode == 2
    assert "cannot split 100 training examples with validation fraction 0.01" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_refused(mnist_dir: Path, tmp_path: Path, run_job_script) -> None:
    result = run_job_script("preprocess.py", ["--input-dir", str(mnist_dir), "--output-dir", str(tmp_path),
                                              "--class-names", "a,b"])
    assert result.returncode == 2 and "--class-names has 2 names, expected 10" in result.stderr
