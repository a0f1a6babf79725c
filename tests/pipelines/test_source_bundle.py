"""The job source bundle: exactly the container code, deterministic and content-hashed."""

from __future__ import annotations

import io
import tarfile

import pytest

from pipelines.source_bundle import collect_bundle
from tests.helpers import write_files


def test_bundle_is_deterministic_and_content_hashed(tmp_path):
    write_files(tmp_path, {"training/__init__.py": "", "training/a.py": "A = 1\n", "training/sub/b.py": "B\n",
                              "training/__pycache__/a.cpython-311.pyc": "junk", "training/notes.txt": "no",
                              "inference/__init__.py": "", "inference/requirements.txt": "x\n"})
    first = collect_bundle(tmp_path)
    assert [name for name, _ in first.files] == ["inference/__init__.py", "inference/requirements.txt",
                                                 "training/__init__.py", "training/a.py", "training/sub/b.py"]
    assert collect_bundle(tmp_path, ("training",)).digest != first.digest
    assert first.tarball() == collect_bundle(tmp_path).tarball()

    (tmp_path / "training/a.py").touch()  # a new mtime changes neither hash nor bytes
    assert collect_bundle(tmp_path).tarball() == first.tarball()
    (tmp_path / "training/a.py").write_text("A = 2\n")
    assert collect_bundle(tmp_path).digest != first.digest

    with tarfile.open(fileobj=io.BytesIO(first.tarball()), mode="r:gz") as tar:
        members = tar.getmembers()
        assert {m.name for m in members if m.isfile()} == {name for name, _ in first.files}
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in members)
        tar.extractall(tmp_path / "out", filter="data")
    assert (tmp_path / "out/training/sub/b.py").read_text() == "B\n"


def test_bundle_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="training"):
        collect_bundle(tmp_path)
    (tmp_path / "training").mkdir()
    (tmp_path / "training/requirements.txt").write_text("numpy\n")
    with pytest.raises(FileNotFoundError, match="no .py files"):
        collect_bundle(tmp_path, ("training",))


def test_project_bundle_carries_job_scripts_and_inference_handlers():
    names = {name for name, _ in collect_bundle().files}
    for needed in ("training/preprocess.py", "training/metrics.py", "inference/inference.py",
                   "inference/packaging.py", "inference/requirements.txt"):
        assert needed in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)
