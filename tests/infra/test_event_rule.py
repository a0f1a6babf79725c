"""The deploy pipeline's EventBridge rule, as the template declares it, routed by moto's EventBridge: of
"SageMaker Model Package State Change" events only an Approved, Completed version of our group starts a
deployment. PendingManualApproval (every registration), Rejected, another group's approval and an approval
still InProgress do not: the reference template's rule fired on all of them (its users' complaint #15)."""

from __future__ import annotations

import copy
import json

import boto3
import pytest
from moto import mock_aws

from tests.infra.templates import resources

GROUP = "image-classification"
REGION = "us-east-1"
EVENT = {  # the shape SageMaker sends (detail trimmed to the fields a rule can filter on, plus a few)
    "version": "0", "id": "c800a495-b000-072c-7392-c683e89c96a8",
    "detail-type": "SageMaker Model Package State Change", "source": "aws.sagemaker",
    "account": "123456789012", "time": "2026-06-03T04:45:23Z", "region": REGION,
    "resources": [f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{GROUP}/7"],
    "detail": {"ModelPackageName": f"{GROUP}/7", "ModelPackageGroupName": GROUP, "ModelPackageVersion": 7,
               "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{GROUP}/7",
               "CreationTime": 1622695255225, "ModelPackageStatus": "Completed",
               "ModelApprovalStatus": "Approved",
               "InferenceSpecification": {"Containers": [{"ModelDataUrl": "s3://b/model.tar.gz"}]}},
}


def _event(**detail) -> dict:
    event = copy.deepcopy(EVENT)
    event["detail"].update(detail)
    return event


CASES = {
    "approved": (_event(), True),
    "pending": (_event(ModelApprovalStatus="PendingManualApproval"), False),
    "rejected": (_event(ModelApprovalStatus="Rejected"), False),
    "other group approved": (_event(ModelPackageGroupName="someone-elses-models"), False),
    "approved, still in progress": (_event(ModelPackageStatus="InProgress"), False),
}


def _pattern() -> dict:
    pattern = resources("deploy-pipeline.yml")["ApprovedModelRule"]["Properties"]["EventPattern"]
    text = json.dumps(pattern).replace('{"Ref": "ProjectName"}', json.dumps(GROUP))  # the stack's default
    return json.loads(text)


@pytest.fixture
def events(monkeypatch):
    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", REGION)):
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield boto3.client("events", region_name=REGION), boto3.client("sqs", region_name=REGION)


def test_only_approved_versions_of_our_group_start_the_pipeline(events):
    client, sqs = events
    queue = sqs.create_queue(QueueName="deploy-pipeline-stand-in")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    client.put_rule(Name="approved-model", EventPattern=json.dumps(_pattern()), State="ENABLED")
    client.put_targets(Rule="approved-model", Targets=[{"Id": "pipeline", "Arn": arn}])
    for name, (event, _) in CASES.items():
        entry = {"Source": event["source"], "DetailType": event["detail-type"], "Resources": event["resources"],
                 "Detail": json.dumps({**event["detail"], "case": name})}
        assert client.put_events(Entries=[entry])["FailedEntryCount"] == 0
    delivered = []
    while messages := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            delivered.append(json.loads(message["Body"])["detail"]["case"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    assert delivered == [name for name, (_, matches) in CASES.items() if matches] == ["approved"]


def test_the_pattern_filters_on_group_status_and_completion():
    pattern = _pattern()
    assert pattern["source"] == ["aws.sagemaker"]
    assert pattern["detail-type"] == ["SageMaker Model Package State Change"]
    assert pattern["detail"] == {"ModelPackageGroupName": [GROUP], "ModelApprovalStatus": ["Approved"],
                                 "ModelPackageStatus": ["Completed"]}
