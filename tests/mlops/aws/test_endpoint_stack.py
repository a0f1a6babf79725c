"""`mlops deploy --target sagemaker`, `mlops smoke-test --target sagemaker`, `mlops endpoints stack-config` and
`mlops gate --target sagemaker` against moto: the real infra/ stacks (roles; the artifact bucket without the model
package group, which moto's CloudFormation lacks), the endpoint stack created then updated to a new version, the
endpoint described, the smoke test's digits answered with what our inference handlers say for them (moto's
runtime returns queued answers), and the gate answering a waiting CodePipeline approval (botocore's Stubber: moto
has no GetPipelineState or PutApprovalResult)."""

from __future__ import annotations

import base64
import json
import warnings

import boto3
import pytest
import requests
from botocore.stub import Stubber
from click.testing import CliRunner
from moto import mock_aws

from inference import inference as handlers
from mlops.aws import gate
from mlops.cli import main
from mlops.registry import SageMakerRegistry
from mlops.serve import smoke
from tests.helpers.models import trained_cnn, write_cnn_model_dir
from tests.helpers.registry import EVAL_URI, EVALUATION, make_request
from tests.infra.templates import INFRA, load

REGION = "us-east-1"
GROUP = "image-classification"
CONNECTION = "arn:aws:codeconnections:us-east-1:123456789012:connection/abc"


def mlops(*args: str):
    return CliRunner().invoke(main, ["--region", REGION, *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """What the quick CNN answers for each smoke-test probe, through the real handlers (moto serves no model)."""
    state, config = trained_cnn()
    model = handlers.model_fn(str(write_cnn_model_dir(tmp_path_factory.mktemp("cnn"), state, config)))
    bodies = []
    for probe in smoke.probes():
        text, _ = handlers.output_fn(handlers.predict_fn(handlers.input_fn(probe.body, probe.content_type), model),
                                     "application/json")
        bodies.append(text)
    return bodies


@pytest.fixture
def binary_bodies(monkeypatch):
    """moto's InvokeEndpoint decodes every body as UTF-8 (PNGs crash it): hand it base64 text instead, so each body
    still keys its own queued answer. Only moto's request parsing changes; the client sends the real bytes."""
    from moto.sagemakerruntime.responses import SageMakerRuntimeResponse

    original = SageMakerRuntimeResponse.setup_class

    def setup_class(self, request, full_url=None, headers=None, use_raw_body=None):
        original(self, request, full_url, headers, use_raw_body=True)
        if isinstance(self.body, bytes):
            self.body = base64.b64encode(self.body).decode("ascii")

    monkeypatch.setattr(SageMakerRuntimeResponse, "setup_class", setup_class)


@pytest.fixture
def aws(monkeypatch, binary_bodies):
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # moto: "no CloudFormation support for ..." (alarms, autoscaling)
        cfn = boto3.client("cloudformation", region_name=REGION)
        artifacts = load("artifacts.yml")
        standin = {k: v for k, v in artifacts.items() if k not in ("Resources", "Outputs")}
        standin["Resources"] = {k: v for k, v in artifacts["Resources"].items() if k != "ModelPackageGroup"}
        standin["Outputs"] = {k: v for k, v in artifacts["Outputs"].items() if k != "ModelPackageGroupArn"}
        cfn.create_stack(StackName="ic-artifacts", TemplateBody=json.dumps(standin))
        cfn.create_stack(StackName="ic-roles", TemplateBody=(INFRA / "roles.yml").read_text(),
                         Parameters=[{"ParameterKey": "ConnectionArn", "ParameterValue": CONNECTION}],
                         Capabilities=["CAPABILITY_NAMED_IAM"])
        bucket = cfn.describe_stacks(StackName="ic-artifacts")["Stacks"][0]["Outputs"][0]["OutputValue"]
        monkeypatch.setenv("MLOPS_BUCKET", bucket)  # the deploy audit trail lives there
        boto3.client("s3", region_name=REGION).put_object(Bucket=bucket, Key=EVAL_URI.split("/", 3)[3],
                                                          Body=json.dumps(EVALUATION).encode())
        boto3.client("s3", region_name=REGION).create_bucket(Bucket="mlops-bucket")
        boto3.client("s3", region_name=REGION).put_object(Bucket="mlops-bucket", Key=EVAL_URI.split("/", 3)[3],
                                                          Body=json.dumps(EVALUATION).encode())
        registry = SageMakerRegistry(region=REGION)
        for _ in range(2):
            registry.create_model_package(make_request(group=GROUP))
        yield registry, cfn


def _queue_answers(bodies: list[str], wrong: int | None = None) -> None:
    results = []
    for i, body in enumerate(bodies):
        if i == wrong:
            answer = json.loads(body)
            answer["predicted_class"] = (answer["predicted_class"] + 1) % 10
            body = json.dumps(answer)
        results.append({"Body": body, "ContentType": "application/json", "InvokedProductionVariant": "AllTraffic"})
    response = requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/endpoint-results",
                             json={"results": results, "region": REGION}, timeout=10)
    assert response.status_code == 201


@pytest.mark.slow
def test_deploy_creates_then_updates_the_stack_and_smoke_tests_it(aws, answers):
    registry, cfn = aws
    refused = mlops("deploy", "--target", "sagemaker", "--stage", "staging")
    assert refused.exit_code == 1 and "no Approved version" in refused.output
    registry.approve(GROUP, 1, approver="alice", comment="ok")

    created = mlops("deploy", "--target", "sagemaker", "--stage", "staging")
    assert created.exit_code == 0, created.output
    result = json.loads(created.stdout)
    assert result["Operation"] == "created" and result["StackStatus"] == "CREATE_COMPLETE"
    assert result["StackName"] == f"{GROUP}-staging-endpoint" and result["ModelPackageVersion"] == 1
    assert result["EndpointStatus"] == "InService"
    parameters = {p["ParameterKey"]: p["ParameterValue"]
                  for p in cfn.describe_stacks(StackName=result["StackName"])["Stacks"][0]["Parameters"]}
    assert parameters["ModelPackageName"].endswith(f"model-package/{GROUP}/1")
    assert parameters["DataCaptureSamplingPercentage"] == "100" and parameters["TrafficRoutingType"] == "ALL_AT_ONCE"
    sm = boto3.client("sagemaker", region_name=REGION)
    endpoint = sm.describe_endpoint(EndpointName=result["EndpointName"])
    config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    assert config["DataCaptureConfig"]["InitialSamplingPercentage"] == 100
    assert config["DataCaptureConfig"]["DestinationS3Uri"].endswith("/data-capture")

    refused = mlops("deploy", "--target", "sagemaker", "--stage", "prod")
    assert refused.exit_code == 1 and "not been smoke-tested on staging" in refused.output

    _queue_answers(answers)
    passed = mlops("smoke-test", "--target", "sagemaker", "--stage", "staging", "--endpoint-name",
                   result["EndpointName"])
    assert passed.exit_code == 0, passed.output
    assert f"smoke test PASSED: {result['EndpointName']} (staging), {GROUP} version 1: 60/60 right" in passed.output
    smoke_tests = registry.describe_model_package(GROUP, 1)["SmokeTests"]
    assert [(t["Stage"], t["Result"]) for t in smoke_tests] == [("staging", "Passed")]
    slow = mlops("smoke-test", "--target", "sagemaker", "--stage", "staging", "--endpoint-name",
                 result["EndpointName"], "--max-p99-ms", "0.0001")
    assert slow.exit_code == 1 and "p99 over the limit" in slow.output

    registry.approve(GROUP, 2, approver="alice", comment="better")
    updated = json.loads(mlops("deploy", "--target", "sagemaker", "--stage", "staging").stdout)
    assert updated["Operation"] == "updated" and updated["StackStatus"] == "UPDATE_COMPLETE"
    assert updated["ModelPackageVersion"] == 2 and _stack_model_package(cfn, sm, updated).endswith(f"/{GROUP}/2")
    back = json.loads(mlops("deploy", "--target", "sagemaker", "--stage", "staging", "--version", "1").stdout)
    assert back["Operation"] == "updated" and back["ModelPackageVersion"] == 1  # --version picks an older one
    assert _stack_model_package(cfn, sm, back).endswith(f"/{GROUP}/1")


def _stack_model_package(cfn, sm, result: dict) -> str:
    """The stack's Model's package. (moto's CloudFormation replaces the Model on an update but leaves the
    EndpointConfig pointing at the old one, so the endpoint -> config -> model chain is only read before updates.)"""
    outputs = {o["OutputKey"]: o["OutputValue"]
               for o in cfn.describe_stacks(StackName=result["StackName"])["Stacks"][0]["Outputs"]}
    return sm.describe_model(ModelName=outputs["ModelName"])["PrimaryContainer"]["ModelPackageName"]


@pytest.mark.slow
def test_a_wrong_answer_fails_the_smoke_test_and_is_recorded(aws, answers):
    registry, _ = aws
    registry.approve(GROUP, 1, approver="alice", comment="ok")
    endpoint = json.loads(mlops("deploy", "--target", "sagemaker", "--stage", "staging").stdout)["EndpointName"]
    _queue_answers(answers, wrong=7)
    failed = mlops("smoke-test", "--target", "sagemaker", "--stage", "staging", "--endpoint-name", endpoint)
    assert failed.exit_code == 1
    probe = smoke.probes()[7]
    assert f"digit #{probe.index} ({probe.label}, {probe.form}) -> {(probe.label + 1) % 10}" in failed.output
    assert registry.describe_model_package(GROUP, 1)["SmokeTests"][-1]["Result"] == "Failed"
    missing = mlops("smoke-test", "--target", "sagemaker", "--stage", "staging", "--endpoint-name", "nope")
    assert missing.exit_code == 1 and "endpoint nope" in missing.output


def test_stack_config_writes_both_stages_for_one_version(aws, tmp_path):
    registry, _ = aws
    registry.approve(GROUP, 2, approver="alice", comment="ok")
    written = mlops("endpoints", "stack-config", "--output-dir", str(tmp_path))
    assert written.exit_code == 0, written.output
    staging = json.loads((tmp_path / "staging-config.json").read_text())
    prod = json.loads((tmp_path / "prod-config.json").read_text())
    assert staging["Parameters"]["ModelPackageName"] == prod["Parameters"]["ModelPackageName"]
    assert staging["Parameters"]["ModelPackageName"].endswith(f"/{GROUP}/2")
    assert (staging["Parameters"]["EndpointName"], prod["Parameters"]["EndpointName"]) == \
        (f"{GROUP}-staging", f"{GROUP}-prod")
    assert prod["Parameters"]["TrafficRoutingType"] == "CANARY" and prod["Tags"]["mlops:stage"] == "prod"
    assert set(staging) == {"Parameters", "Tags"}  # all CodePipeline's TemplateConfiguration allows besides StackPolicy
    env = dict(line.split("=", 1) for line in (tmp_path / "selected.env").read_text().split())
    assert env[gate.VERSION_VARIABLE] == "2" and env["MODEL_PACKAGE_ARN"].endswith(f"/{GROUP}/2")


def _pipeline_waiting(stub: Stubber, version: int) -> None:
    stub.add_response("get_pipeline_state", {"pipelineName": "p", "stageStates": [
        {"stageName": "DeployStaging", "actionStates": []},
        {"stageName": gate.APPROVAL_STAGE, "latestExecution": {"pipelineExecutionId": "exec-1", "status": "InProgress"},
         "actionStates": [{"actionName": gate.APPROVAL_ACTION,
                           "latestExecution": {"status": "InProgress", "token": "token-1"}}]}]},
        {"name": f"{GROUP}-deploy"})
    stub.add_response("list_action_executions", {"actionExecutionDetails": [
        {"actionName": gate.BUILD_ACTION, "output": {"outputVariables": {gate.VERSION_VARIABLE: str(version)}}}]},
        {"pipelineName": f"{GROUP}-deploy", "filter": {"pipelineExecutionId": "exec-1"}})


def test_gate_on_sagemaker_answers_the_pipelines_manual_approval(aws):
    registry, _ = aws
    registry.approve(GROUP, 1, approver="alice", comment="ok")
    registry.record_smoke_test(GROUP, 1, "staging", True, "60/60 right", endpoint=f"{GROUP}-staging", by="codebuild")
    codepipeline = boto3.client("codepipeline", region_name=REGION)
    with Stubber(codepipeline) as stub:
        _pipeline_waiting(stub, 1)
        with pytest.raises(Exception, match="waits for a decision on version 1, not 2"):
            gate.decide(REGION, GROUP, "prod", "Approved", "ship it", 2, "erin", f"{GROUP}-deploy",
                        codepipeline=codepipeline, registry=registry)
        _pipeline_waiting(stub, 1)
        stub.add_response("put_approval_result", {}, {
            "pipelineName": f"{GROUP}-deploy", "stageName": gate.APPROVAL_STAGE, "actionName": gate.APPROVAL_ACTION,
            "token": "token-1", "result": {"summary": "Approved by erin: ship it", "status": "Approved"}})
        record, answered = gate.decide(REGION, GROUP, "prod", "Approved", "ship it", None, "erin",
                                       f"{GROUP}-deploy", codepipeline=codepipeline, registry=registry)
        stub.assert_no_pending_responses()
    assert "DeployProd runs next" in answered
    assert record["ModelPackageVersion"] == 1
    assert [(g["Stage"], g["Decision"], g["By"], g["Comment"]) for g in record["GateHistory"]] == \
        [("prod", "Approved", "erin", "ship it")]
    described = mlops("registry", "describe", "--target", "sagemaker", "--group", GROUP, "--version", "1")
    assert "prod gate Approved  by erin  \"ship it\"" in described.output
    deployed = mlops("deploy", "--target", "sagemaker", "--stage", "prod")
    assert deployed.exit_code == 0, deployed.output
    prod = json.loads(deployed.stdout)
    assert prod["StackName"] == f"{GROUP}-prod-endpoint" and prod["Operation"] == "created"
