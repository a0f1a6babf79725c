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


@pytest.mark.parametrize(("value", "expected"), [("file:///data/my%20set", "/data/my set"), ("/data/x", "/data/x"),
                                                 ("relative/dir", "relative/dir"), ("s3://b/k/", None)])
def test_local_data_path(value, expected):
    result = staging.local_data_path(value)
    assert (str(result) if result else None) == expected


def test_local_data_path_refuses_a_remote_host():
    with pytest.raises(ValueError, match="file:// URI must name a local path"):
        staging.local_data_path("file://server/share")


def test_stage_local_path_with_checksums(tmp_path, monkeypatch):
    from training.datasets import verify_checksums

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    write_files(tmp_path / "pets", {"train/cat/1.png": "a", "train/dog/2.png": "b", ".hidden": "x"})
    uri = staging.stage_local_path_local(tmp_path / "pets", "mlops-local")
    assert uri.startswith("s3://mlops-local/data/local/pets-")
    staged = s3_uri_to_path(uri)
    assert sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file()) == [
        "SHA256SUMS", "train/cat/1.png", "train/dog/2.png"]
    assert set(verify_checksums(staged)) == {"train/cat/1.png", "train/dog/2.png"}
    assert staging.stage_local_path_local(tmp_path / "pets", "mlops-local") == uri  # same content, same prefix
    (tmp_path / "pets/train/dog/2.png").write_text("changed")
    assert staging.stage_local_path_local(tmp_path / "pets", "mlops-local") != uri


def test_stage_local_path_refuses_links_out_and_missing_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    write_files(tmp_path, {"data/train/a/1.png": "a", "secret/key": "k"})
    (tmp_path / "data/train/b").symlink_to(tmp_path / "secret")
    with pytest.raises(ValueError, match=r"data/train/b: resolves to .* outside the dataset folder"):
        staging.stage_local_path_local(tmp_path / "data", "mlops-local")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        staging.stage_local_path_local(tmp_path / "nothing", "mlops-local")


class _FakeS3:
    """put_object/head_object over a dict, 404 as botocore raises it."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_object(self, Bucket: str, Key: str, Body) -> None:
        self.objects[(Bucket, Key)] = Body if isinstance(Body, bytes) else Body.read()

    def head_object(self, Bucket: str, Key: str) -> dict:
        from botocore.exceptions import ClientError

        if (Bucket, Key) not in self.objects:
            raise ClientError({"Error": {"Code": "404"}}, "HeadObject")
        return {"ContentLength": len(self.objects[(Bucket, Key)])}


def test_stage_local_path_to_s3_uploads_once_sums_last(tmp_path):
    write_files(tmp_path / "set", {"train/a/1.png": "a", "train/b/2.png": "b"})
    client = _FakeS3()
    uri = staging.stage_local_path_to_s3(tmp_path / "set", "bkt", client)
    keys = [key for _, key in client.objects]
    prefix = uri.removeprefix("s3://bkt/")
    assert keys == [f"{prefix}train/a/1.png", f"{prefix}train/b/2.png", f"{prefix}SHA256SUMS"]
    assert staging.stage_local_path_to_s3(tmp_path / "set", "bkt", client) == uri
    assert len(client.objects) == 3


def test_a_weights_file_is_staged_by_digest_with_checksums(tmp_path, monkeypatch):
    from training.datasets import verify_checksums

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    write_files(tmp_path / "w", {"resnet18.pth": "weights"})
    uri = staging.stage_local_path_local(tmp_path / "w" / "resnet18.pth", "mlops-local", staging.WEIGHTS_INPUT)
    assert uri.startswith("s3://mlops-local/pretrained/local/") and len(uri.rstrip("/").rsplit("/", 1)[1]) == 16
    staged = s3_uri_to_path(uri)
    assert sorted(p.name for p in staged.iterdir()) == ["SHA256SUMS", "resnet18.pth"]
    assert set(verify_checksums(staged)) == {"resnet18.pth"}
    assert staging.stage_local_path_local(tmp_path / "w", "mlops-local", staging.WEIGHTS_INPUT) == uri  # same bytes


def test_a_weights_path_must_hold_one_state_dict_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    write_files(tmp_path, {"none/notes.txt": "x", "two/a.pth": "a", "two/b.pt": "b", "bin/resnet18.bin": "w"})
    for folder, found in (("none", "found 0"), ("two", "found 2: a.pth, b.pt"), ("bin/resnet18.bin", "found 0")):
        with pytest.raises(ValueError, match=f"PretrainedWeightsUrl .*{found}"):
            staging.stage_local_path_local(tmp_path / folder, "mlops-local", staging.WEIGHTS_INPUT)
    with pytest.raises(FileNotFoundError, match="PretrainedWeightsUrl .*no such file"):
        staging.stage_local_path_local(tmp_path / "absent.pth", "mlops-local", staging.WEIGHTS_INPUT)
    assert not (tmp_path / "home").exists()  # nothing staged


def test_the_no_weights_note_is_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    written = staging.stage_no_weights_note_local("s3://mlops-local/pretrained/none/")
    assert written == s3_uri_to_path("s3://mlops-local/pretrained/none/README.txt")
    assert b"trains from scratch" in written.read_bytes()
    assert staging.stage_no_weights_note_local("s3://mlops-local/pretrained/none/") is None
    client = _FakeS3()
    assert staging.stage_no_weights_note_to_s3("s3://bkt/pretrained/none/", client) == \
        "s3://bkt/pretrained/none/README.txt"
    assert staging.stage_no_weights_note_to_s3("s3://bkt/pretrained/none/", client) is None
    assert list(client.objects) == [("bkt", "pretrained/none/README.txt")]
