"""`mlops registry list|describe|approve|reject` on the local registry and, through moto, on SageMaker."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlops import store
from mlops.cli import main
from mlops.registry import LocalRegistry
from tests.helpers.registry import EVAL_URI, EVALUATION, make_request
from training.atomic import atomic_write_json

GROUP = "image-classification"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USER", "carol")
    monkeypatch.delenv("MLOPS_MODEL_PACKAGE_GROUP", raising=False)
    atomic_write_json(store.s3_uri_to_path(EVAL_URI), EVALUATION)
    registry = LocalRegistry()
    for _ in range(2):
        registry.create_model_package(make_request(group=GROUP))
    return registry


def mlops(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_shows_metrics_and_status(home):
    result = mlops("registry", "list")
    assert result.exit_code == 0, result.output
    for text in (GROUP, "PendingManualApproval", "99.41%", "97.12%", "CNN compact, tuned"):
        assert text in result.output
    records = json.loads(mlops("registry", "list", "--json").output)
    assert [r["ModelPackageVersion"] for r in records] == [2, 1]


def test_approve_then_describe_shows_history(home):
    result = mlops("registry", "approve", "--version", "1", "--comment", "accuracy 99.4% beats baseline")
    assert result.exit_code == 0, result.output
    assert "version 1 is now Approved" in result.output and "mlops deploy --target local --version 1" in result.output
    described = mlops("registry", "describe", "--version", "1")
    assert "approved by: carol" in described.output
    assert "PendingManualApproval -> Approved  by carol  \"accuracy 99.4% beats baseline\"" in described.output
    record = json.loads(mlops("registry", "describe", "--version", "1", "--json").output)
    assert record["ModelApprovalStatus"] == "Approved" and record["ApprovalHistory"][0]["By"] == "carol"


def test_default_version_is_newest_pending(home):
    result = mlops("registry", "reject", "--approver", "dave", "--comment", "overfits")
    assert "version 2 is now Rejected" in result.output
    assert json.loads(mlops("registry", "list", "--status", "Rejected", "--json").output)[0]["ModelPackageVersion"] == 2


def test_invalid_transitions_exit_non_zero_with_reason(home):
    assert mlops("registry", "approve", "--version", "1").exit_code == 0
    again = mlops("registry", "approve", "--version", "1")
    assert again.exit_code == 1 and "already Approved" in again.output
    reverse = mlops("registry", "reject", "--version", "1")
    assert reverse.exit_code == 1 and "--comment" in reverse.output
    missing = mlops("registry", "describe", "--version", "9")
    assert missing.exit_code == 1 and "no model package version 9" in missing.output
    other = mlops("registry", "describe", "--group", "nope")
    assert other.exit_code == 1 and GROUP in other.output  # names the groups that exist


def test_group_from_the_global_option(home):
    LocalRegistry().create_model_package(make_request(group="other"))
    result = mlops("--model-package-group", "other", "registry", "describe", "--json")
    assert json.loads(result.output)["ModelPackageGroupName"] == "other"


def test_sagemaker_target_with_moto(monkeypatch):
    moto = pytest.importorskip("moto")
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with moto.mock_aws():
        import boto3

        from mlops.registry import SageMakerRegistry

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="mlops-bucket")
        s3.put_object(Bucket="mlops-bucket", Key=EVAL_URI.split("/", 3)[3], Body=json.dumps(EVALUATION).encode())
        SageMakerRegistry().create_model_package(make_request(group=GROUP))
        listed = mlops("registry", "list", "--target", "sagemaker")
        assert "PendingManualApproval" in listed.output and "99.41%" in listed.output
        result = mlops("registry", "approve", "--target", "sagemaker", "--version", "1", "--comment", "ship it")
        assert result.exit_code == 0 and "is now Approved" in result.output
        record = json.loads(mlops("registry", "describe", "--target", "sagemaker", "--json").output)
        assert record["ModelApprovalStatus"] == "Approved" and record["ApprovalDescription"] == "ship it"
        assert record["ApprovedBy"].startswith("arn:aws:")  # the STS caller
        approved = boto3.client("sagemaker", region_name="us-east-1").list_model_packages(
            ModelPackageGroupName=GROUP, ModelApprovalStatus="Approved")["ModelPackageSummaryList"]
        assert len(approved) == 1


def test_list_as_csv_is_one_row_per_version(home):
    import io

    import pandas as pd

    result = mlops("registry", "list", "--format", "csv")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.output))
    assert list(table.columns) == ["group", "version", "status", "accuracy", "baseline_accuracy", "created",
                                   "approved_by", "description", "arn", "model_data"]
    assert table["version"].tolist() == [2, 1]
    assert set(table["status"]) == {"PendingManualApproval"} and set(table["group"]) == {GROUP}
    assert table["accuracy"].iloc[0] == pytest.approx(0.9941)
    assert table["arn"].iloc[0].endswith(f"{GROUP}/2")
    assert pd.Timestamp(table["created"].iloc[0]).year >= 2024
    empty = mlops("registry", "list", "--format", "csv", "--status", "Rejected")
    assert empty.exit_code == 0 and empty.output.strip() == ",".join(table.columns)
    refused = CliRunner().invoke(main, ["registry", "list", "--json", "--format", "csv"])
    assert refused.exit_code == 1 and "--json and --format csv disagree" in refused.output
