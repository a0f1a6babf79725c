"""The deploy stage on this machine, end to end, with real models, real servers and real HTTP clients:

staging deploy -> smoke test (recorded) -> prod refused before the smoke test and before the gate -> gate
(recorded, shown by `mlops registry describe`) -> prod -> a blue/green swap under load with 0 failed requests ->
rollbacks when the new version's server does not come up, or comes up but answers wrong -> data capture files in
SageMaker's format -> `mlops endpoints list` -> stop.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from click.testing import CliRunner

from mlops import store
from mlops.cli import main
from mlops.registry import LocalRegistry
from mlops.serve import deploy, smoke
from tests.helpers.models import trained_cnn, write_cnn_model_dir
from tests.helpers.stages import Load, model_data_path, register_model

pytestmark = pytest.mark.slow
GROUP = "image-classification"
STAGING, PROD = f"{GROUP}-staging", f"{GROUP}-prod"


def mlops(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """A store with three versions of a good quick CNN and one with random weights, all Approved."""
    home = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLOPS_HOME", str(home))
    patch.setenv("USER", "tester")
    models = tmp_path_factory.mktemp("models")
    state, config = trained_cnn()
    good = write_cnn_model_dir(models / "good", state, config)
    versions = {name: register_model(good, GROUP, tag=name) for name in ("v1", "v2", "v3")}
    versions["random"] = register_model(write_cnn_model_dir(models / "random"), GROUP, tag="random")
    ports = {}
    try:
        yield {"home": home, "versions": versions, "ports": ports}
    finally:
        for name in (STAGING, PROD):
            mlops("deploy", "--stop", "--name", name)
        patch.undo()


def _deploy(stage: str, version: int, *extra: str):
    return mlops("deploy", "--target", "local", "--stage", stage, "--version", str(version), "--background",
                 "--workers", "1", "--port", str(_port(stage)), *extra)


def _port(stage: str) -> int:
    from tests.helpers import free_port

    state = deploy.read_state(f"{GROUP}-{stage}")
    return state["Port"] if state and state.get("Status") == "InService" else free_port()


def _smoke(stage: str = "staging"):
    return mlops("smoke-test", "--target", "local", "--stage", stage)


def test_staging_then_prod_refused_until_smoke_test_and_gate(flow):
    v1 = flow["versions"]["v1"]
    started = _deploy("staging", v1)
    assert started.exit_code == 0, started.output
    state = deploy.read_state(STAGING)
    assert state["Stage"] == "staging" and state["ModelPackageVersion"] == v1 and state["Status"] == "InService"

    refused = _deploy("prod", v1)
    assert refused.exit_code == 1
    assert "has not been smoke-tested on staging" in refused.output and "gate is not approved" in refused.output
    early_gate = mlops("gate", "approve", "--stage", "prod", "--version", str(v1), "--comment", "too early")
    assert early_gate.exit_code == 1 and "cannot approve the prod gate" in early_gate.output

    passed = _smoke()
    assert passed.exit_code == 0, passed.output
    assert f"smoke test PASSED: {STAGING} (staging), {GROUP} version {v1}: 60/60 right" in passed.output

    refused = _deploy("prod", v1)
    assert refused.exit_code == 1
    assert "gate is not approved" in refused.output and "smoke-tested" not in refused.output

    rejected = mlops("gate", "reject", "--stage", "prod", "--comment", "wait for the release window",
                     "--approver", "carol")
    assert rejected.exit_code == 0, rejected.output  # default version: the newest that passed staging
    assert "prod gate Rejected by carol" in rejected.output
    refused = _deploy("prod", v1)
    assert refused.exit_code == 1 and "gate was Rejected by carol" in refused.output

    approved = mlops("gate", "approve", "--stage", "prod", "--version", str(v1), "--comment", "release window open",
                     "--approver", "dave")
    assert approved.exit_code == 0, approved.output
    described = mlops("registry", "describe", "--version", str(v1))
    assert "staging: Passed  by tester" in described.output
    assert "prod gate Rejected  by carol  \"wait for the release window\"" in described.output
    assert "prod gate Approved  by dave  \"release window open\"" in described.output
    record = LocalRegistry().describe_model_package(GROUP, v1)
    assert [g["Decision"] for g in record["GateHistory"]] == ["Rejected", "Approved"]

    started = _deploy("prod", v1)
    assert started.exit_code == 0, started.output
    prod = deploy.read_state(PROD)
    assert prod["ModelPackageVersion"] == v1 and prod["Port"] != deploy.read_state(STAGING)["Port"]
    assert "(pre-traffic)" in LocalRegistry().describe_model_package(GROUP, v1)["SmokeTests"][-1]["Summary"]


def _promote(version: int) -> None:
    """staging -> smoke test -> gate, for a version that then goes to prod."""
    assert _deploy("staging", version).exit_code == 0
    assert _smoke().exit_code == 0
    assert mlops("gate", "approve", "--stage", "prod", "--version", str(version), "--comment", "ok").exit_code == 0


def test_swap_under_load_loses_no_request(flow):
    v1, v2 = flow["versions"]["v1"], flow["versions"]["v2"]
    _promote(v2)
    old = deploy.read_state(PROD)
    assert old["ModelPackageVersion"] == v1
    body = smoke.probes((13,), ("upscaled colour",))[0].body
    with Load(old["Url"], body, clients=4) as load:
        time.sleep(1.0)
        start = time.monotonic()
        swapped = _deploy("prod", v2)
        end = time.monotonic()
        time.sleep(1.0)
    assert swapped.exit_code == 0, swapped.output
    during = load.between(start, end)
    assert load.failures == [], load.failures[:3]
    assert len(during) > 50, len(during)  # traffic really flowed through the swap
    versions = [o.version for o in sorted(load.outcomes, key=lambda o: o.start)]
    assert versions[0] == str(v1) and versions[-1] == str(v2)
    switch = versions.index(str(v2))
    assert set(versions[switch + 50:]) == {str(v2)}  # once switched, the old version gets nothing new
    new = deploy.read_state(PROD)
    assert new["ModelPackageVersion"] == v2 and new["Port"] == old["Port"]
    assert not deploy.is_process(old["Backend"]["Pid"], "mlops.serve.server")  # drained and stopped
    seconds = new["LastDeployment"]["Seconds"]
    assert seconds["Total"] >= seconds["StartAndHealthCheck"] > 0 and seconds["Switch"] < 0.5


def test_new_version_whose_server_fails_leaves_the_old_one_serving(flow):
    v2, v3 = flow["versions"]["v2"], flow["versions"]["v3"]
    _promote(v3)
    model_data_path(GROUP, v3).write_bytes(b"not a model archive any more")  # the artifact changed after staging
    before = deploy.read_state(PROD)
    body = smoke.probes((13,), ("raw 28x28",))[0].body
    with Load(before["Url"], body, content_type="application/json", clients=2) as load:
        failed = _deploy("prod", v3)
    assert failed.exit_code == 1 and "cannot extract model archive" in failed.output
    assert load.failures == [] and {o.version for o in load.outcomes} == {str(v2)}
    state = deploy.read_state(PROD)
    assert state["ModelPackageVersion"] == v2 and state["Status"] == "InService"


def test_new_version_failing_the_smoke_test_is_rolled_back(flow):
    v2, v3, broken = flow["versions"]["v2"], flow["versions"]["v3"], flow["versions"]["random"]
    _promote(v2)  # staging back on a good version, then a model that loads and answers, wrongly
    model_data_path(GROUP, v3).write_bytes(model_data_path(GROUP, broken).read_bytes())
    before = deploy.read_state(PROD)
    body = smoke.probes((13,), ("dark-on-light",))[0].body
    with Load(before["Url"], body, clients=2) as load:
        failed = _deploy("prod", v3)
    assert failed.exit_code == 1, failed.output
    assert "failed the pre-traffic smoke test, traffic stays on version" in failed.output
    assert load.failures == [] and {o.version for o in load.outcomes} == {str(v2)}
    state = deploy.read_state(PROD)
    assert state["ModelPackageVersion"] == v2
    assert state["LastDeployment"]["Result"] == "RolledBack" and state["LastDeployment"]["FailedStep"] == "smoke test"
    last = LocalRegistry().describe_model_package(GROUP, v3)["SmokeTests"][-1]
    assert last["Stage"] == "prod" and last["Result"] == "Failed"
    # the dead green server is gone: only the router and the live server remain
    assert all(not deploy.is_process(pid, "mlops.serve.server") or pid == state["Backend"]["Pid"]
               for pid in _pids(flow["home"] / "endpoints" / PROD / "backends"))


def _pids(folder):
    for pidfile in folder.glob("*.pid"):
        try:
            yield int(pidfile.read_text())
        except ValueError:
            continue


def test_capture_files_follow_sagemaker_format(flow):
    prod = deploy.read_state(PROD)
    capture = prod["DataCapture"]
    assert capture["InitialSamplingPercentage"] == 20  # infra/config/prod.json
    staging = deploy.read_state(STAGING)
    assert staging["DataCapture"]["InitialSamplingPercentage"] == 100
    time.sleep(1.5)  # the writer flushes every second
    root = store.s3_uri_to_path(f"{staging['DataCapture']['DestinationS3Uri']}/{STAGING}/AllTraffic/")
    files = sorted(root.rglob("*.jsonl"))
    assert files, f"no capture files under {root}"
    for path in files:
        parts = path.relative_to(root).parts
        assert len(parts) == 5 and [len(p) for p in parts[:4]] == [4, 2, 2, 2]  # yyyy/mm/dd/hh/
        minute, second, millis, *uuid = path.stem.split("-")
        assert (len(minute), len(second), len(millis), len(uuid)) == (2, 2, 3, 5)
    records = [json.loads(line) for path in files for line in path.read_text().splitlines()]
    assert len(records) >= 60  # staging captures every request: at least the smoke tests' 60 each
    encodings = {}
    for record in records:
        assert set(record) == {"captureData", "eventMetadata", "eventVersion"} and record["eventVersion"] == "0"
        request, response = record["captureData"]["endpointInput"], record["captureData"]["endpointOutput"]
        assert request["mode"] == "INPUT" and response["mode"] == "OUTPUT"
        assert response["encoding"] == "JSON" and "predicted_class" in json.loads(response["data"])
        assert set(record["eventMetadata"]) == {"eventId", "inferenceTime"}
        assert record["eventMetadata"]["inferenceTime"].endswith("Z")
        encodings[request["observedContentType"]] = request["encoding"]
        if request["encoding"] == "BASE64":
            assert base64.b64decode(request["data"]).startswith(b"\x89PNG")
    assert encodings == {"application/json": "JSON", "image/png": "BASE64"}


def test_endpoints_list_and_stop(flow):
    listed = mlops("endpoints", "list", "--json")
    rows = {row["EndpointName"]: row for row in json.loads(listed.output)}
    assert rows[STAGING]["Stage"] == "staging" and rows[PROD]["Stage"] == "prod"
    assert rows[PROD]["Status"] == "InService" and rows[PROD]["ModelPackageVersion"] == flow["versions"]["v2"]
    assert rows[PROD]["CapturePath"] == f"s3://mlops-local/data-capture/{PROD}/AllTraffic/"
    table = mlops("endpoints", "list")
    assert PROD in table.output and "InService" in table.output
    stopped = mlops("deploy", "--stop", "--stage", "prod")
    assert stopped.exit_code == 0 and "stopped endpoint" in stopped.output
    rows = {row["EndpointName"]: row for row in json.loads(mlops("endpoints", "list", "--json").output)}
    assert rows[PROD]["Status"] == "Stopped" and rows[STAGING]["Status"] == "InService"
    gone = _smoke("prod")
    assert gone.exit_code == 1 and "is not running" in gone.output
