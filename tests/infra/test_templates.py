"""infra/: every template is clean under cfn-lint, and says what the deploy stage needs: the bucket's protections,
the endpoint's capture, blue/green rollback and autoscaling, the deploy pipeline's stages and the names the
roles grant access to. Every command the infra buildspecs run exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from mlops import stage_config
from mlops.aws import gate
from mlops.aws.endpoint_stack import stack_parameters
from mlops.serve import capture
from tests.helpers import ROOT
from tests.infra.templates import INFRA, load, resources, sub_text, template_paths


def test_cfn_lint_is_clean_on_every_template():
    paths = template_paths()
    assert {p.name for p in paths} == {"artifacts.yml", "roles.yml", "ci.yml", "deploy-pipeline.yml", "endpoint.yml"}
    cfn_lint = Path(sys.executable).parent / "cfn-lint"  # the pinned one (setup.py's dev extra)
    result = subprocess.run([str(cfn_lint), *map(str, paths)], capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_artifact_bucket_is_encrypted_private_versioned_and_tls_only():
    bucket = resources("artifacts.yml", "AWS::S3::Bucket")["ArtifactBucket"]["Properties"]
    rule = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert all(bucket["PublicAccessBlockConfiguration"][k] is True for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    assert bucket["VersioningConfiguration"]["Status"] == "Enabled"
    policy = resources("artifacts.yml", "AWS::S3::BucketPolicy")["ArtifactBucketPolicy"]["Properties"]
    [statement] = policy["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*" and statement["Action"] == "s3:*"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert {sub_text(r) or str(r) for r in statement["Resource"]} == {"{'Fn::GetAtt': ['ArtifactBucket', 'Arn']}",
                                                                      "${ArtifactBucket.Arn}/*"}
    group = resources("artifacts.yml", "AWS::SageMaker::ModelPackageGroup")["ModelPackageGroup"]["Properties"]
    assert group["ModelPackageGroupName"] == {"Ref": "ProjectName"}
    # the other stacks name the bucket the way this one does
    name = sub_text(bucket["BucketName"])
    for template in ("roles.yml",):
        assert f"s3:::{name}" in (INFRA / template).read_text()


def test_endpoint_stack_model_capture_blue_green_and_autoscaling():
    template = load("endpoint.yml")
    res = template["Resources"]
    assert res["Model"]["Properties"]["PrimaryContainer"] == {"ModelPackageName": {"Ref": "ModelPackageName"}}
    config = res["EndpointConfig"]["Properties"]
    capture_config = config["DataCaptureConfig"]
    assert capture_config["EnableCapture"] is True
    assert capture_config["InitialSamplingPercentage"] == {"Ref": "DataCaptureSamplingPercentage"}
    assert {o["CaptureMode"] for o in capture_config["CaptureOptions"]} == {"Input", "Output"}
    header = capture_config["CaptureContentTypeHeader"]  # the local capture encodes the same types as text
    assert tuple(header["CsvContentTypes"]) == capture.CSV_CONTENT_TYPES
    assert tuple(header["JsonContentTypes"]) == capture.JSON_CONTENT_TYPES
    assert config["ProductionVariants"][0]["VariantName"] == capture.VARIANT

    deployment = res["Endpoint"]["Properties"]["DeploymentConfig"]
    routing = deployment["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]
    assert routing["Type"] == {"Ref": "TrafficRoutingType"}
    assert set(template["Parameters"]["TrafficRoutingType"]["AllowedValues"]) >= {"CANARY", "LINEAR"}
    alarms = {a["AlarmName"]["Ref"] for a in deployment["AutoRollbackConfiguration"]["Alarms"]}
    metrics = {res[name]["Properties"]["MetricName"] for name in alarms}
    assert metrics == {"Invocation5XXErrors", "ModelLatency"}

    target = res["ScalableTarget"]["Properties"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == ({"Ref": "MinCapacity"}, {"Ref": "MaxCapacity"})
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    policy = res["InvocationsScalingPolicy"]["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert policy["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"


def test_stage_configs_give_the_endpoint_stack_exactly_its_parameters():
    declared = load("endpoint.yml")["Parameters"]
    for stage in stage_config.STAGES:
        config = stage_config.load(stage)
        given = stack_parameters(config, "arn:aws:sagemaker:us-east-1:123456789012:model-package/g/1", "g-" + stage)
        assert set(given) == set(declared), stage
        for name, value in given.items():
            allowed = declared[name].get("AllowedValues")
            assert allowed is None or value in allowed, (stage, name, value)
            if declared[name]["Type"] == "Number":
                assert re.fullmatch(r"\d+(\.\d+)?", value), (stage, name, value)
    prod = stage_config.load("prod").parameters
    assert prod["TrafficRoutingType"] in ("CANARY", "LINEAR")  # prod shifts traffic gradually, alarms watching


def test_deploy_pipeline_stages_and_the_names_the_gate_reads():
    res = resources("deploy-pipeline.yml")
    stages = res["DeployPipeline"]["Properties"]["Stages"]
    assert [s["Name"] for s in stages] == ["Source", "Build", "DeployStaging", "TestStaging", gate.APPROVAL_STAGE,
                                          "DeployProd"]
    actions = {s["Name"]: s["Actions"][0] for s in stages}
    assert actions["Build"]["Name"] == gate.BUILD_ACTION and actions["Build"]["Namespace"] == "Build"
    assert actions[gate.APPROVAL_STAGE]["Name"] == gate.APPROVAL_ACTION
    assert actions[gate.APPROVAL_STAGE]["ActionTypeId"]["Provider"] == "Manual"
    assert actions["Source"]["Configuration"]["DetectChanges"] is False  # only an approval starts it
    for stage in ("DeployStaging", "DeployProd"):
        configuration = actions[stage]["Configuration"]
        assert configuration["TemplatePath"] == "StackConfig::infra/endpoint.yml"
        assert configuration["TemplateConfiguration"] == f"StackConfig::build/{stage[6:].lower()}-config.json"
    smoke = yaml.safe_load((INFRA / "buildspec-smoke-test.yml").read_text())
    assert ".venv/bin/mlops smoke-test --target sagemaker --stage staging" in smoke["phases"]["build"]["commands"]
    select = yaml.safe_load((INFRA / "buildspec-deploy.yml").read_text())
    assert gate.VERSION_VARIABLE in select["env"]["exported-variables"]
    assert set(select["artifacts"]["files"]) == {"infra/endpoint.yml", "build/staging-config.json",
                                                 "build/prod-config.json"}


def test_codebuild_runs_buildspec_on_every_commit():
    project = resources("ci.yml", "AWS::CodeBuild::Project")["CommitBuild"]["Properties"]
    assert project["Source"]["BuildSpec"] == "buildspec.yml" and (ROOT / "buildspec.yml").is_file()
    assert project["Triggers"]["Webhook"] is True
    [[event, _]] = project["Triggers"]["FilterGroups"]
    assert event == {"Type": "EVENT", "Pattern": "PUSH"}
    variables = {v["Name"] for v in project["Environment"]["EnvironmentVariables"]}
    assert {"MLOPS_ROLE_ARN", "MLOPS_BUCKET"} <= variables  # what buildspec.yml says the project must set


def test_roles_name_exactly_what_the_other_stacks_create():
    roles = (INFRA / "roles.yml").read_text()
    pipeline = resources("deploy-pipeline.yml")
    for logical in ("SelectModelBuild", "SmokeTestBuild"):
        name = sub_text(pipeline[logical]["Properties"]["Name"])
        assert f"project/{name}" in roles and f"/aws/codebuild/{name}" in roles
    assert sub_text(pipeline["DeployPipeline"]["Properties"]["Name"]) in roles
    ci = sub_text(resources("ci.yml")["CommitBuild"]["Properties"]["Name"])
    assert f"/aws/codebuild/{ci}" in roles
    for stage in stage_config.STAGES:
        assert f"stack/${{ProjectName}}-{stage}-endpoint/" in roles
        assert f"endpoint/${{ProjectName}}-{stage}" in roles


def test_every_command_of_the_infra_buildspecs_exists():
    from mlops.cli import main

    for name in ("buildspec-deploy.yml", "buildspec-smoke-test.yml"):
        spec = yaml.safe_load((INFRA / name).read_text())
        assert str(spec["version"]) == "0.2"
        for command in (c for phase in spec["phases"].values() for c in phase.get("commands", [])):
            first = command.split()[0]
            if first == ".venv/bin/mlops":
                argv = command.split()[1:]
                result = CliRunner().invoke(main, [*argv, "--help"])
                assert result.exit_code == 0, f"{name}: {command}: {result.output}"
            elif first not in ("export", "set"):
                assert (ROOT / first).is_file(), f"{name}: {first} is missing"
