"""Model Registry: versions, valid transitions, approver history, metrics; local SQLite and SageMaker (moto)."""

from __future__ import annotations

import json
import threading

import pytest

from mlops import store
from mlops.registry import APPROVED, PENDING, REJECTED, LocalRegistry, RegistryError, SageMakerRegistry
from mlops.registry.base import check_transition, promotion_problems
from tests.helpers.registry import EVAL_URI, EVALUATION, GROUP, make_request
from training.atomic import atomic_write_json


@pytest.fixture()
def local(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USER", "tester")
    atomic_write_json(store.s3_uri_to_path(EVAL_URI), EVALUATION)
    return LocalRegistry()


def test_versions_increase_per_group_and_arns_look_like_sagemaker(local):
    first = local.create_model_package(make_request())
    second = local.create_model_package(make_request())
    other = local.create_model_package(make_request(group="Other-Group"))
    assert (first["ModelPackageVersion"], second["ModelPackageVersion"], other["ModelPackageVersion"]) == (1, 2, 1)
    assert second["ModelPackageArn"] == "arn:aws:sagemaker:us-east-1:000000000000:model-package/mnistclassifier/2"
    listed = local.list_model_packages(GROUP)
    assert [r["ModelPackageVersion"] for r in listed] == [2, 1]
    assert listed[0]["ModelApprovalStatus"] == PENDING
    assert listed[0]["InferenceSpecification"]["Containers"][0]["ModelDataUrl"].endswith("model.tar.gz")


def test_concurrent_registrations_get_distinct_versions(local, tmp_path):
    results, errors = [], []

    def register():
        try:
            results.append(LocalRegistry().create_model_package(make_request())["ModelPackageVersion"])
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 9))


def test_metrics_read_from_evaluation_json(local):
    local.create_model_package(make_request())
    record = local.describe_model_package(GROUP, 1)
    assert record["Metrics"]["accuracy"] == pytest.approx(0.9941)
    assert record["Metrics"]["baseline_accuracy"] == pytest.approx(0.9712)


def test_missing_evaluation_is_reported_not_fatal(local):
    request = make_request()
    request["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] = "s3://mlops-bucket/nowhere/evaluation.json"
    local.create_model_package(request)
    metrics = local.describe_model_package(GROUP)["Metrics"]
    assert metrics["accuracy"] is None and "cannot read" in metrics["error"]


def test_approve_records_approver_comment_and_history(local):
    local.create_model_package(make_request())
    record = local.approve(GROUP, 1, approver="alice", comment="beats baseline")
    assert record["ModelApprovalStatus"] == APPROVED
    assert record["ApprovalDescription"] == "beats baseline"
    assert record["ApprovedBy"] == "alice"
    assert record["LastModifiedTime"] >= record["CreationTime"]
    record = local.reject(GROUP, 1, approver="bob", comment="drift found in prod data")
    record = local.approve(GROUP, 1, comment="drift was a labelling bug")  # approver from $USER
    history = record["ApprovalHistory"]
    assert [(h["PreviousStatus"], h["Status"], h["By"]) for h in history] == [
        (PENDING, APPROVED, "alice"), (APPROVED, REJECTED, "bob"), (REJECTED, APPROVED, "tester")]
    assert history[1]["Comment"] == "drift found in prod data"


@pytest.mark.parametrize(("current", "target", "comment", "message"), [
    (APPROVED, APPROVED, "x", "already Approved"),
    (REJECTED, REJECTED, "x", "already Rejected"),
    (APPROVED, REJECTED, None, "give a --comment"),
    (REJECTED, APPROVED, "  ", "give a --comment"),
    (PENDING, PENDING, "x", "not one of"),
    (PENDING, "Deleted", "x", "not one of"),
])
def test_invalid_transitions_refused(current, target, comment, message):
    with pytest.raises(RegistryError, match=message):
        check_transition(current, target, comment)


def test_invalid_transition_leaves_no_trace(local):
    local.create_model_package(make_request())
    local.approve(GROUP, 1, approver="alice")
    with pytest.raises(RegistryError, match="already Approved"):
        local.approve(GROUP, 1, approver="mallory")
    with pytest.raises(RegistryError, match="--comment"):
        local.reject(GROUP, 1, approver="mallory")
    record = local.describe_model_package(GROUP, 1)
    assert record["ModelApprovalStatus"] == APPROVED
    assert [h["By"] for h in record["ApprovalHistory"]] == ["alice"]


def test_default_version_is_newest_pending_and_latest_approved(local):
    for _ in range(3):
        local.create_model_package(make_request())
    assert local.approve(GROUP, approver="a")["ModelPackageVersion"] == 3
    assert local.approve(GROUP, approver="a")["ModelPackageVersion"] == 2
    assert local.latest_approved(GROUP)["ModelPackageVersion"] == 3
    local.reject(GROUP, 3, approver="a", comment="regression")
    assert local.latest_approved(GROUP)["ModelPackageVersion"] == 2
    assert local.reject(GROUP, approver="a")["ModelPackageVersion"] == 1
    with pytest.raises(RegistryError, match="no model package in group"):
        local.approve(GROUP, approver="a")


def test_unknown_package_and_bad_requests(local):
    with pytest.raises(RegistryError, match="no model package"):
        local.describe_model_package("Nope", 1)
    with pytest.raises(RegistryError, match="ModelPackageGroupName"):
        local.create_model_package({**make_request(), "ModelPackageGroupName": "bad name!"})
    with pytest.raises(RegistryError, match="ModelApprovalStatus"):
        local.create_model_package(make_request(status="Maybe"))
    with pytest.raises(RegistryError, match="invalid CreateModelPackage request"):
        local.create_model_package({**make_request(), "InferenceSpecification": {"Containers": "not-a-list"}})
    assert local.list_model_packages() == []


# -- SageMaker (moto) ---------------------------------------------------------------------------------------------

@pytest.fixture()
def sagemaker(monkeypatch):
    moto = pytest.importorskip("moto")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_SESSION_TOKEN": "testing"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with moto.mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="mlops-bucket")
        s3.put_object(Bucket="mlops-bucket", Key=EVAL_URI.split("/", 3)[3], Body=json.dumps(EVALUATION).encode())
        yield SageMakerRegistry(region="us-east-1")


def test_sagemaker_register_approve_reject_with_history(sagemaker):
    created = sagemaker.create_model_package(make_request())  # creates the group too
    assert created["ModelPackageVersion"] == 1
    assert created["ModelPackageArn"].endswith(":model-package/mnistclassifier/1")
    assert sagemaker.create_model_package(make_request())["ModelPackageVersion"] == 2

    record = sagemaker.approve(GROUP, 1, comment="good: 99.4% vs baseline 97.1%")  # approver from STS
    assert record["ModelApprovalStatus"] == APPROVED
    assert record["ApprovalDescription"] == "good: 99.4% vs baseline 97.1%"
    assert record["ApprovedBy"].startswith("arn:aws:")
    assert record["Metrics"]["accuracy"] == pytest.approx(0.9941)
    assert record["Metrics"]["baseline_accuracy"] == pytest.approx(0.9712)

    with pytest.raises(RegistryError, match="already Approved"):
        sagemaker.approve(GROUP, 1, approver="x")
    record = sagemaker.reject(GROUP, 1, approver="bob@example.com", comment="bad, really (see ticket #42)")
    history = record["ApprovalHistory"]
    assert [(h["PreviousStatus"], h["Status"]) for h in history] == [(PENDING, APPROVED), (APPROVED, REJECTED)]
    assert history[1]["By"] == "bob@example.com"
    assert history[1]["Comment"] == "bad really see ticket 42"  # SageMaker's metadata charset
    assert record["ApprovedBy"] is None and record["DecidedBy"] == "bob@example.com"
    for value in record["CustomerMetadataProperties"].values():  # what real SageMaker accepts
        assert len(value) <= 256


def test_sagemaker_and_local_records_have_the_same_shape(sagemaker, local):
    local.create_model_package(make_request())
    sagemaker.create_model_package(make_request())
    a = local.approve(GROUP, 1, approver="alice", comment="ok")
    b = sagemaker.approve(GROUP, 1, approver="alice", comment="ok")
    keys = {"ModelPackageGroupName", "ModelPackageVersion", "ModelPackageArn", "ModelApprovalStatus",
            "ApprovalDescription", "CreationTime", "LastModifiedTime", "InferenceSpecification", "ModelMetrics",
            "MetadataProperties", "Metrics", "ApprovedBy", "ApprovalHistory"}
    assert keys <= set(a) and keys <= set(b)
    assert a["ModelPackageArn"].split(":")[5] == b["ModelPackageArn"].split(":")[5]  # accounts differ
    for key in ("ModelPackageGroupName", "ModelPackageVersion", "ModelApprovalStatus",
                "ApprovalDescription", "ApprovedBy", "InferenceSpecification", "ModelMetrics"):
        assert a[key] == b[key], key
    assert {k: v for k, v in a["Metrics"].items()} == {k: v for k, v in b["Metrics"].items()}
    assert [(h["Status"], h["By"], h["Comment"]) for h in a["ApprovalHistory"]] == \
        [(h["Status"], h["By"], h["Comment"]) for h in b["ApprovalHistory"]]
    assert [r["ModelPackageVersion"] for r in sagemaker.list_model_packages(status=APPROVED)] == [1]
    assert sagemaker.latest_approved(GROUP)["ModelPackageVersion"] == 1


# -- the deploy stage's audit trails: smoke tests and gate decisions ----------------------------------------------

def _promotion_trail(registry) -> dict:
    v = registry.create_model_package(make_request())["ModelPackageVersion"]
    registry.approve(GROUP, v, approver="alice", comment="ok")
    with pytest.raises(RegistryError, match="has not been smoke-tested on staging"):
        registry.decide_gate(GROUP, "prod", APPROVED, "too early", v, "carol")
    with pytest.raises(RegistryError, match="needs a --comment"):
        registry.decide_gate(GROUP, "prod", REJECTED, "  ", v, "carol")
    registry.record_smoke_test(GROUP, v, "staging", False, "59/60 right", endpoint="e-staging", by="ci")
    problems = promotion_problems(registry.describe_model_package(GROUP, v), "prod")
    assert "failed staging's smoke test" in problems[0] and "gate is not approved" in problems[1]
    registry.record_smoke_test(GROUP, v, "staging", True, "60/60 right", endpoint="e-staging", by="ci")
    registry.decide_gate(GROUP, "prod", REJECTED, "wait for Monday", None, "carol")  # default: newest that passed
    with pytest.raises(RegistryError, match="gate was Rejected by carol"):
        registry.check_promotable(registry.describe_model_package(GROUP, v), "prod")
    record = registry.decide_gate(GROUP, "prod", APPROVED, "Monday: ship it", v, "dave")
    registry.check_promotable(record, "prod")
    return record


def test_local_smoke_tests_and_gate_decisions(local):
    record = _promotion_trail(local)
    assert [(t["Stage"], t["Result"], t["By"]) for t in record["SmokeTests"]] == \
        [("staging", "Failed", "ci"), ("staging", "Passed", "ci")]
    assert [(g["Decision"], g["By"], g["Comment"]) for g in record["GateHistory"]] == \
        [("Rejected", "carol", "wait for Monday"), ("Approved", "dave", "Monday: ship it")]
    local.reject(GROUP, 1, approver="erin", comment="found a bug")  # the registry decision still rules
    with pytest.raises(RegistryError, match="is Rejected, not Approved"):
        local.check_promotable(local.describe_model_package(GROUP, 1), "prod")


def test_sagemaker_trails_live_in_the_bucket_not_on_the_package(sagemaker, monkeypatch):
    sagemaker.create_model_package(make_request())
    with pytest.raises(RegistryError, match="needs the artifact bucket"):  # no MLOPS_BUCKET here
        sagemaker.record_smoke_test(GROUP, 1, "staging", True, "60/60 right")
    sagemaker.audit_uri = "s3://mlops-bucket/deploy-audit/"
    record = _promotion_trail(sagemaker)
    assert record["ModelPackageVersion"] == 2
    assert [g["Comment"] for g in record["GateHistory"]] == ["wait for Monday", "Monday: ship it"]  # in full
    assert not any(k.startswith(("mlops.smoke", "mlops.gate"))
                   for k in record["CustomerMetadataProperties"])  # no UpdateModelPackage: no state-change event
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="mlops-bucket",
                                                                  Prefix="deploy-audit/")["Contents"]]
    assert len(keys) == 4 and all(k.startswith(f"deploy-audit/{GROUP}/2/") for k in keys)
