"""Outputs moved into place on SageMaker's mounts: /opt/ml/model and every processing output path are separate
filesystems there. /dev/shm is a separate filesystem here; folders linked onto it stand in for the mounts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from training.atomic import staged_dir

SHM = Path("/dev/shm")


@pytest.fixture()
def mount(tmp_path: Path):
    """A folder on another filesystem than tmp_path, removed afterwards."""
    folder = SHM / f"mlops-test-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    assert os.stat(folder).st_dev != os.stat(tmp_path).st_dev, "/dev/shm must be its own filesystem"
    yield folder
    for path in sorted(folder.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    folder.rmdir()


def _leftovers(*roots: Path) -> list[str]:
    return [str(p) for root in roots for p in root.rglob("*") if ".staging-" in p.name or p.name.endswith(".tmp")]


def test_a_model_folder_on_another_filesystem(tmp_path: Path, mount: Path):
    """The model folder itself is the mount (its parent is not): a sibling staging folder would fail with EXDEV."""
    model_dir = tmp_path / "model"
    model_dir.symlink_to(mount)
    with staged_dir(model_dir) as staging:
        (staging / "model.pth").write_bytes(b"weights")
        (staging / "code").mkdir()
        (staging / "code" / "inference.py").write_text("handlers")
    assert (mount / "model.pth").read_bytes() == b"weights"
    assert (mount / "code" / "inference.py").read_text() == "handlers"
    assert _leftovers(tmp_path, mount) == []


def test_output_folders_that_are_mounts_are_refilled_not_replaced(tmp_path: Path, mount: Path):
    """Processing outputs: /opt/ml/processing/output/train is a mount inside the output folder. Removing it fails
    with EBUSY and renaming onto it with EXDEV, so it must be emptied and refilled in place."""
    output = tmp_path / "output"
    output.mkdir()
    (mount / "train").mkdir()
    (mount / "train" / "old.npz").write_bytes(b"old")
    (output / "train").symlink_to(mount / "train")
    inode = os.stat(output / "train").st_ino
    with staged_dir(output) as staging:
        for split in ("train", "test"):
            (staging / split).mkdir()
            (staging / split / f"{split}.npz").write_bytes(split.encode())
    assert (output / "train").is_symlink() and os.stat(output / "train").st_ino == inode  # the same folder
    assert sorted(p.name for p in (mount / "train").iterdir()) == ["train.npz"]
    assert (output / "test" / "test.npz").read_bytes() == b"test"
    assert _leftovers(tmp_path, mount) == []


def test_a_failure_leaves_the_mounted_folder_as_it_was(tmp_path: Path, mount: Path):
    model_dir = tmp_path / "model"
    model_dir.symlink_to(mount)
    (mount / "kept.txt").write_text("kept")
    with pytest.raises(RuntimeError), staged_dir(model_dir) as staging:
        (staging / "half.pth").write_bytes(b"half")
        raise RuntimeError("training diverged")
    assert sorted(p.name for p in mount.iterdir()) == ["kept.txt"]


def test_the_preprocess_job_writes_onto_mounted_output_folders(tmp_path: Path, mount: Path, mnist_dir, run_job_script):
    output = tmp_path / "output"
    output.mkdir()
    for split in ("train", "validation", "test"):
        (mount / split).mkdir()
        (output / split).symlink_to(mount / split)
    result = run_job_script("preprocess.py", ["--input-dir", str(mnist_dir), "--output-dir", str(output),
                                               "--max-train-samples", "600", "--max-test-samples", "200"])
    assert result.returncode == 0, result.stderr
    for split in ("train", "validation", "test"):
        assert (output / split).is_symlink() and any((mount / split).iterdir()), split
    assert _leftovers(tmp_path, mount) == []
