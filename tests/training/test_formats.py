"""preprocess.py on generated CIFAR-10 archives and image folders, and each bad-data case failing cleanly."""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.datasets import load_manifest, load_split
from training.formats import CIFAR10_NAMES, CIFAR_RECORD, DatasetError, load_pickle

RNG = np.random.default_rng(0)


def _cifar_arrays(count: int) -> tuple[np.ndarray, list[int]]:
    labels = [i % 10 for i in range(count)]
    data = RNG.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    data[:, :1024] = np.asarray(labels, dtype=np.uint8)[:, None] * 25  # learnable: red channel = class
    return data, labels


def make_cifar_binary(root: Path, per_batch: int = 40) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        data, labels = _cifar_arrays(per_batch)
        records = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], data], axis=1)
        (folder / name).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES) + "\n\n")
    return folder


def _py2_style(obj: object) -> bytes:
    """Like the real files (Python 2 cPickle, numpy 1): GLOBAL opcodes naming numpy.core.multiarray.

    Protocol 3 because Python 3's protocol 2 wraps bytes in _codecs.encode, which Python 2's plain strings never
    needed (and the unpickler rightly refuses).
    """
    return pickle.dumps(obj, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def make_cifar_python(root: Path, per_batch: int = 40) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data, labels = _cifar_arrays(per_batch)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(_py2_style(batch))
    (folder / "batches.meta").write_bytes(_py2_style({b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                                      b"num_cases_per_batch": per_batch}))
    return folder


def tar_gz(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def make_image_folder(root: Path, classes: dict[str, int], split: str = "train", size: int = 20,
                      mode: str = "RGB") -> Path:
    for index, (name, count) in enumerate(classes.items()):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size + i % 3, size) if mode == "L" else (size + i % 3, size, 3)
            pixels = np.clip(RNG.normal(40 + 80 * index, 10, size=shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def _run(run_job_script, raw: Path, out: Path, *extra: str):
    return run_job_script("preprocess.py", ["--input-dir", str(raw), "--output-dir", str(out), *extra])


@pytest.mark.parametrize("variant", ["binary", "python"])
@pytest.mark.parametrize("packed", [False, True])
def test_cifar10_archives(tmp_path: Path, run_job_script, variant: str, packed: bool) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    folder = (make_cifar_binary if variant == "binary" else make_cifar_python)(tmp_path / "src")
    if packed:
        tar_gz(folder, raw / "cifar-10.tar.gz")
    else:
        folder.rename(raw / folder.name)
    out = tmp_path / "out"
    result = _run(run_job_script, raw, out)
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out / "train")
    assert manifest["format"] == "cifar10" and manifest["class_names"] == CIFAR10_NAMES
    assert manifest["image_shape"] == [3, 32, 32]
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["validation"]["count"] == 200
    assert manifest["splits"]["test"]["count"] == 40
    test = load_split(out / "test", "test")
    assert test.images.shape == (40, 3, 32, 32) and test.labels.tolist() == [i % 10 for i in range(40)]
    if packed:
        assert "cifar-10.tar.gz" in manifest["source_files"]


def test_image_folder_with_split_and_resize(tmp_path: Path, run_job_script) -> None:
    raw = make_image_folder(tmp_path / "raw", {"cat": 12, "dog": 10, "owl": 11})
    out = tmp_path / "out"
    result = _run(run_job_script, raw, out, "--image-size", "16")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out / "train")
    assert manifest["format"] == "image-folder" and manifest["class_names"] == ["cat", "dog", "owl"]
    assert manifest["image_shape"] == [3, 16, 16]
    counts = {name: sum(manifest["splits"][s]["class_counts"][name] for s in ("train", "validation", "test"))
              for name in manifest["class_names"]}
    assert counts == {"cat": 12, "dog": 10, "owl": 11}
    assert all(manifest["splits"]["test"]["class_counts"][n] >= 1 for n in counts)  # stratified


def test_grayscale_image_folder_with_test_folder(tmp_path: Path, run_job_script) -> None:
    raw = make_image_folder(tmp_path / "raw", {"a": 10, "b": 10}, mode="L")
    make_image_folder(raw, {"a": 3, "b": 4}, split="test", mode="L")
    out = tmp_path / "out"
    result = _run(run_job_script, raw, out, "--data-format", "image-folder", "--image-size", "12")
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(out / "test")
    assert manifest["image_shape"] == [12, 12]
    assert manifest["splits"]["test"]["class_counts"] == {"a": 3, "b": 4}


def test_image_folder_one_level_down_and_hidden_folders_ignored(tmp_path: Path, run_job_script) -> None:
    make_image_folder(tmp_path / "raw" / "pets", {"a": 12, "b": 12}, size=10)
    (tmp_path / "raw" / "pets" / "train" / ".ipynb_checkpoints").mkdir()
    out = tmp_path / "out"
    result = _run(run_job_script, tmp_path / "raw", out)
    assert result.returncode == 0, result.stderr
    assert load_manifest(out / "train")["class_names"] == ["a", "b"]


def _malicious_pickle() -> bytes:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/should-not-exist",))

    return pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=3)


def _bad_case(case: str, tmp_path: Path) -> tuple[Path, str]:
    raw = tmp_path / "raw"
    if case == "empty_class":
        make_image_folder(raw, {"a": 5, "b": 5})
        (raw / "train" / "empty").mkdir()
        return raw, r"train/empty: class folder holds no .png/.jpg images"
    if case == "unreadable_image":
        make_image_folder(raw, {"a": 5, "b": 5})
        (raw / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return raw, r"train/b/broken.png: unreadable image"
    if case == "class_only_in_test":
        make_image_folder(raw, {"a": 5, "b": 5})
        make_image_folder(raw, {"a": 2, "zebra": 2}, split="test")
        return raw, r"test/zebra: class 'zebra' appears only in test"
    if case == "too_few_per_class":
        make_image_folder(raw, {"a": 5, "b": 2})
        return raw, r"train/b: class 'b' has 2 images, at least 3 needed"
    if case == "corrupt_archive":
        raw.mkdir()
        archive = tar_gz(make_cifar_binary(tmp_path / "src"), raw / "cifar.tar.gz")
        archive.write_bytes(archive.read_bytes()[:2000])
        return raw, r"cifar.tar.gz: corrupt or truncated archive"
    if case == "truncated_batch":
        raw.mkdir()
        folder = make_cifar_binary(raw)
        batch = folder / "data_batch_3.bin"
        batch.write_bytes(batch.read_bytes()[:-7])
        return raw, rf"data_batch_3.bin: {40 * CIFAR_RECORD - 7} bytes is not a whole number"
    if case == "forbidden_global":
        raw.mkdir()
        folder = make_cifar_python(raw)
        (folder / "data_batch_2").write_bytes(_malicious_pickle())
        return raw, r"data_batch_2: the pickle references the global posix.system"
    if case == "symlink_escape":
        make_image_folder(raw, {"a": 5, "b": 5})
        outside = make_image_folder(tmp_path / "elsewhere", {"c": 3})
        (raw / "train" / "c").symlink_to(outside / "train" / "c")
        return raw, r"train/c: resolves to .* outside the dataset folder"
    if case == "dotdot_in_archive":
        raw.mkdir()
        with tarfile.open(raw / "evil.tar.gz", "w:gz") as tar:
            info = tarfile.TarInfo("../escaped.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        return raw, r"evil.tar.gz: member '../escaped.txt' would escape"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["empty_class", "unreadable_image", "class_only_in_test", "too_few_per_class",
                                  "corrupt_archive", "truncated_batch", "forbidden_global", "symlink_escape",
                                  "dotdot_in_archive"])
def test_bad_data_fails_cleanly(tmp_path: Path, run_job_script, case: str) -> None:
    raw, expected = _bad_case(case, tmp_path)
    out = tmp_path / "out"
    result = _run(run_job_script, raw, out)
    assert result.returncode == 2, result.stderr
    assert re.search(expected, result.stderr), result.stderr
    assert not out.exists() or not any(out.iterdir()), "a failed job left output behind"
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/should-not-exist").exists()


def test_restricted_unpickler_refuses_before_calling(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"x": print}, protocol=3))
    with pytest.raises(DatasetError, match=r"batch: the pickle references the global builtins.print"):
        load_pickle(path)
