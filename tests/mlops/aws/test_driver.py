"""The SageMaker driver against moto: stage -> upsert -> start -> describe, updates without duplicates,
and the calls moto lacks (ListPipelineExecutionSteps) degrading to a message instead of a traceback."""

from __future__ import annotations

import io
import json
import tarfile

import boto3
import pytest
from click.testing import CliRunner
from moto import mock_aws

from mlops import staging
from mlops.aws.driver import DriverError, SageMakerDriver, Unavailable
from mlops.definition.build import build_definition
from mlops.definition.config import PipelineConfig
from pipelines.source_bundle import code_location, collect_bundle
from tests.helpers import ROOT

REGION = "us-east-1"
BUCKET = "mlops-test-bucket"
ROLE = "arn:aws:iam::123456789012:role/mlops-pipeline"
NAME = "image-classification-test"


@pytest.fixture(scope="module")
def definition() -> dict:
    return build_definition(PipelineConfig(region=REGION, role=ROLE, bucket=BUCKET, pipeline_name=NAME))


@pytest.fixture
def aws(monkeypatch):
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(var, value)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield SageMakerDriver(REGION)


def test_stage_upsert_start_describe(aws, definition):
    driver = aws
    bundle = collect_bundle()
    staged = code_location(BUCKET, NAME, bundle)
    written = driver.stage_code(bundle, staged)
    assert written[-1] == f"{staged.prefix}/sourcedir.tar.gz"  # the tarball last: its presence means complete
    assert driver.stage_code(bundle, staged) == []  # same content hash: nothing uploaded again
    s3 = boto3.client("s3", region_name=REGION)
    tarball = s3.get_object(Bucket=BUCKET, Key=f"{staged.prefix}/sourcedir.tar.gz")["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        assert "training/preprocess.py" in tar.getnames()
    assert s3.get_object(Bucket=BUCKET, Key=f"{staged.prefix}/source/training/preprocess.py")["Body"].read() == \
        (ROOT / "training/preprocess.py").read_bytes()
    # the definition points at exactly what was staged
    assert staged.tarball_uri in json.dumps(definition) and staged.source_uri in json.dumps(definition)

    uploaded = driver.stage_dataset(staging.DATASET_DIR, f"s3://{BUCKET}/data/mnist/")
    assert len(uploaded) == len(staging.DATASET_FILES)
    assert driver.stage_dataset(staging.DATASET_DIR, f"s3://{BUCKET}/data/mnist/") == []

    result = driver.upsert(NAME, definition, ROLE, description="test", tags={"team": "ml"})
    assert result.created and result.pipeline_arn.endswith(f":pipeline/{NAME}")
    sm = boto3.client("sagemaker", region_name=REGION)
    described = sm.describe_pipeline(PipelineName=NAME)
    assert json.loads(described["PipelineDefinition"]) == definition
    assert described["RoleArn"] == ROLE
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=result.pipeline_arn)["Tags"]}
    assert tags["team"] == "ml" and "project" in tags

    execution_arn = driver.start(NAME, {"CnnEpochs": "2", "MaxTrainSamples": "1000"})
    assert execution_arn.startswith(result.pipeline_arn + "/execution/")
    execution = driver.describe(execution_arn)
    assert execution["PipelineExecutionArn"] == execution_arn
    assert "PipelineExecutionStatus" in execution
    assert execution["Parameters"] == {"CnnEpochs": "2", "MaxTrainSamples": "1000"}
    assert "ListPipelineExecutionSteps" in execution["StepsUnavailable"]  # moto lacks it: a message, no traceback

    summaries = driver.list_executions(NAME)
    assert [s["PipelineExecutionArn"] for s in summaries] == [execution_arn]
    execution_id = execution_arn.rsplit("/", 1)[-1]
    assert driver.resolve_execution_arn(NAME, execution_id) == execution_arn
    with pytest.raises(DriverError, match="no execution 'nope'"):
        driver.resolve_execution_arn(NAME, "nope")


def test_second_upsert_updates_rather_than_duplicates(aws, definition):
    driver = aws
    first = driver.upsert(NAME, definition, ROLE)
    changed = json.loads(json.dumps(definition))
    next(p for p in changed["Parameters"] if p["Name"] == "CnnEpochs")["DefaultValue"] = 3
    second = driver.upsert(NAME, changed, ROLE)
    assert first.created and not second.created
    assert second.pipeline_arn == first.pipeline_arn
    sm = boto3.client("sagemaker", region_name=REGION)
    names = [p["PipelineName"] for p in sm.list_pipelines()["PipelineSummaries"]]
    assert names.count(NAME) == 1
    assert driver.pipeline_definition(NAME) == changed


def test_wait_reports_progress_and_final_status(aws, definition):
    driver = aws
    driver.upsert(NAME, definition, ROLE)
    execution_arn = driver.start(NAME)
    updates = []
    status = driver.wait(execution_arn, poll_seconds=0, timeout_seconds=5,
                         on_update=lambda s, steps: updates.append((s, steps)), sleep=lambda _: None)
    assert status in ("Succeeded", "Failed", "Stopped")
    assert updates and isinstance(updates[-1][1], Unavailable)
    assert "ListPipelineExecutionSteps" in str(updates[-1][1])


def test_wait_times_out_with_a_clear_error(aws):
    class Stuck:
        def describe_pipeline_execution(self, **_):
            return {"PipelineExecutionStatus": "Executing"}

        def list_pipeline_execution_steps(self, **_):
            return {"PipelineExecutionSteps": [{"StepName": "Preprocess", "StepStatus": "Executing"}]}

    driver = aws
    driver.sagemaker = Stuck()
    seen = []
    with pytest.raises(DriverError, match="still Executing"):
        driver.wait("arn:x", poll_seconds=0, timeout_seconds=0, on_update=lambda s, steps: seen.append(steps),
                    sleep=lambda _: None)
    assert seen == [[{"StepName": "Preprocess", "StepStatus": "Executing"}]]


def test_errors_are_driver_errors(aws, definition):
    driver = aws
    with pytest.raises(DriverError, match="starting pipeline 'missing'"):
        driver.start("missing")
    with pytest.raises(DriverError, match="does not exist"):
        driver.pipeline_definition("missing")
    bundle = collect_bundle()
    with pytest.raises(DriverError, match="uploading job code"):
        driver.stage_code(bundle, code_location("no-such-bucket", NAME, bundle))


def test_cli_run_sagemaker_and_executions(aws, monkeypatch):
    from mlops.cli import main

    monkeypatch.setenv("MLOPS_ROLE_ARN", ROLE)
    monkeypatch.setenv("MLOPS_BUCKET", BUCKET)
    monkeypatch.setenv("MLOPS_PIPELINE_NAME", NAME)
    monkeypatch.setenv("MLOPS_REGION", REGION)
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--target", "sagemaker", "--param", "CnnEpochs=2", "--tag", "team=ml",
                                  "--poll-seconds", "0"])
    assert result.exit_code == 0, result.output
    execution_arn = next(line for line in result.output.splitlines() if "/execution/" in line)
    assert "created arn:aws:sagemaker" in result.output
    assert "step statuses unavailable" in result.output  # --wait is the default; moto cannot list steps

    again = runner.invoke(main, ["run", "--target", "sagemaker", "--no-wait"])
    assert again.exit_code == 0 and "updated arn:aws:sagemaker" in again.output
    assert "already staged" in again.output

    listed = runner.invoke(main, ["executions", "list", "--target", "sagemaker"])
    assert listed.exit_code == 0 and execution_arn.rsplit("/", 1)[-1] in listed.output
    described = runner.invoke(main, ["executions", "describe", execution_arn.rsplit("/", 1)[-1],
                                     "--target", "sagemaker"])
    assert described.exit_code == 0, described.output
    assert "note: step statuses unavailable" in described.output
    assert "Traceback" not in described.output

    bad = runner.invoke(main, ["run", "--target", "sagemaker", "--param", "Nope=1"])
    assert bad.exit_code == 1 and "not a parameter of this pipeline" in bad.output
    missing = runner.invoke(main, ["executions", "describe", "nope", "--target", "sagemaker"])
    assert missing.exit_code == 1 and "no execution 'nope'" in missing.output

    monkeypatch.delenv("MLOPS_ROLE_ARN")
    needs_role = runner.invoke(main, ["run", "--target", "sagemaker"])
    assert needs_role.exit_code == 1 and "MLOPS_ROLE_ARN" in needs_role.output
