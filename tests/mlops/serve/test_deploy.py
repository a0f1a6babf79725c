"""`mlops deploy --target local` (no --stage: the staging endpoint) and `mlops invoke`: only Approved versions,
safe extraction, a real server."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlops import store
from mlops.cli import main
from mlops.registry import LocalRegistry
from mlops.serve import deploy
from tests.helpers import free_port
from tests.helpers.models import digit_png, load_mnist, package_model, write_xgboost_model_dir
from tests.helpers.registry import EVAL_URI, EVALUATION, make_request
from training.atomic import atomic_write_json

GROUP = "image-classification"
STAGING = f"{GROUP}-staging"
MODEL_URI = "s3://mlops-local/executions/e1/TrainCNN/output/model.tar.gz"


@pytest.fixture(scope="module")
def model_tar(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    return package_model(write_xgboost_model_dir(folder / "dir"), folder / "model.tar.gz")


def register(model_uri: str = MODEL_URI) -> int:
    request = make_request(group=GROUP)
    request["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] = model_uri
    return LocalRegistry().create_model_package(request)["ModelPackageVersion"]


@pytest.fixture()
def home(tmp_path, monkeypatch, model_tar):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    atomic_write_json(store.s3_uri_to_path(EVAL_URI), EVALUATION)
    target = store.s3_uri_to_path(MODEL_URI)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(model_tar.read_bytes())
    register()
    return tmp_path / "home"


def mlops(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_deploy_refuses_versions_that_are_not_approved(home):
    pending = mlops("deploy", "--target", "local", "--version", "1")
    assert pending.exit_code == 1 and "PendingManualApproval, not Approved" in pending.output
    none = mlops("deploy", "--target", "local")
    assert none.exit_code == 1 and "no Approved version" in none.output
    LocalRegistry().reject(GROUP, 1, approver="x")
    rejected = mlops("deploy", "--target", "local", "--version", "1")
    assert rejected.exit_code == 1 and "Rejected, not Approved" in rejected.output
    assert not (home / "endpoints").exists()  # nothing extracted for a refused version


def test_approve_deploy_invoke_right_class_then_stop(home, tmp_path):
    register()  # version 2 stays pending: the newest Approved one is deployed, not the newest
    assert mlops("registry", "approve", "--version", "1", "--approver", "erin").exit_code == 0
    port = free_port()
    started = mlops("deploy", "--target", "local", "--port", str(port), "--workers", "2", "--background")
    assert started.exit_code == 0, started.output
    try:
        state = deploy.read_state(STAGING)
        assert state["ModelPackageVersion"] == 1 and state["Port"] == port and state["Stage"] == "staging"
        assert (home / "endpoints" / STAGING / "models" / "v1" / "code" / "inference.py").is_file()
        images, labels = load_mnist("test", 12)
        hits = 0
        for image, label in zip(images, labels, strict=True):
            png = tmp_path / "digit.png"
            png.write_bytes(digit_png(image, size=96, invert=True))  # a dark-on-light drawing, any size
            result = mlops("invoke", "--file", str(png), "--url", f"http://127.0.0.1:{port}/invocations")
            assert result.exit_code == 0, result.output
            answer = json.loads(result.output)
            hits += answer["predicted_class"] == label
        assert hits >= 9, hits
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not a png")
        refused = mlops("invoke", "--file", str(bad), "--url", f"http://127.0.0.1:{port}/invocations")
        assert refused.exit_code == 1 and "answered 400" in refused.output
        again = mlops("deploy", "--target", "local", "--background")
        assert again.exit_code == 0 and "already serves version 1: nothing to do" in again.output
        busy = mlops("deploy", "--target", "local", "--port", str(port), "--name", "another-endpoint")
        assert busy.exit_code == 1 and "already in use" in busy.output
    finally:
        stopped = mlops("deploy", "--stop")
    assert "stopped endpoint" in stopped.output
    gone = mlops("invoke", "--file", str(tmp_path / "digit.png"), "--url", f"http://127.0.0.1:{port}/invocations")
    assert gone.exit_code == 1 and "cannot reach" in gone.output
    assert "is not running" in mlops("deploy", "--stop").output


def test_invoke_needs_a_known_type(tmp_path):
    body = tmp_path / "digit.bmp"
    body.write_bytes(b"BM")
    result = mlops("invoke", "--file", str(body))
    assert result.exit_code == 1 and "--content-type" in result.output


def _tar_with(tmp_path, name: str, add) -> str:
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    uri = f"s3://mlops-local/bad/{name}"
    target = store.s3_uri_to_path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    return uri


def _file(tar: tarfile.TarFile, name: str, data: bytes = b"{}") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


@pytest.mark.parametrize(("name", "add", "message"), [
    ("escape.tar.gz", lambda t: (_file(t, "model_config.json"), _file(t, "../../escaped.txt")), "cannot extract"),
    # the "data" filter strips the leading "/" (the file stays inside); the empty config then fails the load check
    ("absolute.tar.gz", lambda t: (_file(t, "model_config.json"), _file(t, "/tmp/mlops-abs-evil.txt")), "servable"),
    ("symlink.tar.gz", lambda t: (_file(t, "model_config.json"), _link(t, "passwd", "/etc/passwd")), "cannot extract"),
    ("noconfig.tar.gz", lambda t: _file(t, "model.pth", b"x"), "no model_config.json"),
    ("badconfig.tar.gz", lambda t: _file(t, "model_config.json", b'{"framework": "pytorch"}'), "not servable"),
])
def test_unsafe_or_broken_archives_are_refused(home, tmp_path, name, add, message):
    version = register(_tar_with(tmp_path, name, add))
    LocalRegistry().approve(GROUP, version, approver="x")
    with pytest.raises(deploy.DeployError, match=message):
        deploy.prepare_model(deploy.choose_version(LocalRegistry(), GROUP, version), deploy.endpoint_dir(GROUP))
    assert not (tmp_path / "escaped.txt").exists() and not (home.parent / "escaped.txt").exists()
    assert not Path("/tmp/mlops-abs-evil.txt").exists()
    models = home / "endpoints" / GROUP / "models"
    leftovers = [p.name for p in models.iterdir()] if models.exists() else []
    assert all(not n.startswith(".") for n in leftovers), leftovers  # no staging folder survives


@pytest.mark.slow
def test_foreground_deploy_serves_until_sigterm_then_stops_everything(home, tmp_path):
    """`mlops deploy --target local` without --background, as before: it serves until stopped, and leaves nothing."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import ROOT

    LocalRegistry().approve(GROUP, 1, approver="erin")
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlops"), "deploy", "--target", "local", "--port", str(port),
               "--workers", "1"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (deploy.read_state(STAGING) or {}).get("Status") != "InService":
            assert process.poll() is None, process.stdout.read()
            time.sleep(0.2)
        state = deploy.read_state(STAGING)
        assert state["Port"] == port
        png = tmp_path / "digit.png"
        png.write_bytes(digit_png(load_mnist("test", 1)[0][0]))
        assert mlops("invoke", "--file", str(png), "--url", state["Url"]).exit_code == 0
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Ctrl-C stops" in output
    assert deploy.read_state(STAGING)["Status"] == "Stopped"
    assert not deploy.is_process(state["RouterPid"], "mlops.serve.router")
    assert not deploy.is_process(state["Backend"]["Pid"], "mlops.serve.server")
