"""Staging the code bundle and the shipped dataset into the local store."""

from __future__ import annotations

import pytest

from mlops import staging
from mlops.store import s3_uri_to_path
from pipelines.source_bundle import code_location, collect_bundle
from tests.helpers import write_files


def test_stage_local_writes_both_layouts(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    write_files(tmp_path, {"training/__init__.py": "", "training/job.py": "print('hi')\n"})
    bundle = collect_bundle(tmp_path, ("training",))
    staged = code_location("bkt", "pipe", bundle)
    assert staged.tarball_uri == f"s3://bkt/pipe/code/{bundle.digest}/sourcedir.tar.gz"
    written = staging.stage_local(bundle, staged)
    assert len(written) == 3  # two source files and the tarball
    assert s3_uri_to_path(staged.tarball_uri).read_bytes() == bundle.tarball()
    assert (s3_uri_to_path(staged.source_uri) / "training/job.py").read_text() == "print('hi')\n"
    assert staging.stage_local(bundle, staged) == []  # already staged: nothing rewritten
    assert not list((tmp_path / "home").rglob("*.tmp"))


def test_stage_dataset_local(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    written = staging.stage_dataset_local(staging.DATASET_DIR, "s3://mlops-local/data/mnist/")
    assert {p.name for p in written} == set(staging.DATASET_FILES)
    target = s3_uri_to_path("s3://mlops-local/data/mnist/SHA256SUMS")
    assert target.read_bytes() == (staging.DATASET_DIR / "SHA256SUMS").read_bytes()
    assert staging.stage_dataset_local(staging.DATASET_DIR, "s3://mlops-local/data/mnist/") == []
    with pytest.raises(FileNotFoundError, match="dataset files missing"):
        staging.dataset_files(tmp_path)
