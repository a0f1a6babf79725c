"""``mlops smoke-test`` and ``mlops gate``: the checks between staging and prod.

    mlops smoke-test --target local|sagemaker --stage staging|prod [--max-p99-ms MS]
    mlops gate approve|reject --stage prod [--version N] --comment TEXT [--approver WHO] [--target sagemaker]

The smoke test's result is recorded for the version the endpoint serves; the gate's decision is recorded with
who, when and why. ``mlops registry describe`` shows both trails. With ``--target sagemaker`` the gate is
CodePipeline's manual approval: the decision is recorded in SageMaker's registry and, when the deploy pipeline
waits at its approval for this version, sent to it (PutApprovalResult).
"""

from __future__ import annotations

import click

from mlops import stage_config
from mlops.cli.common import config, echo_json, fail
from mlops.registry import APPROVED, REJECTED, RegistryError, get_registry
from mlops.registry.base import GATED_STAGES
from mlops.serve import bluegreen, smoke
from mlops.serve import deploy as deployer

TARGET = click.option("--target", type=click.Choice(["local", "sagemaker"]), default="local", show_default=True)
GROUP = click.option("--group", default=None, help="Model package group [default: --model-package-group].")


@click.command("smoke-test")
@TARGET
@click.option("--stage", type=click.Choice(list(stage_config.STAGES)), required=True)
@GROUP
@click.option("--max-p99-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Fail when the p99 latency is above this [default: the stage config's SmokeTest.MaxP99Milliseconds].")
@click.option("--endpoint-name", default=None, help="The endpoint [default: <group>-<stage>].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def smoke_test(ctx: click.Context, target: str, stage: str, group: str | None, max_p99_ms: float | None,
               endpoint_name: str | None, as_json: bool) -> None:
    """Send real MNIST test digits (raw, upscaled colour, dark-on-light); exit 1 on any wrong answer or slow p99."""
    cfg = config(ctx)
    group = group or cfg.model_package_group
    name = endpoint_name or stage_config.endpoint_name(group, stage)
    try:
        limit = max_p99_ms or stage_config.load(stage).smoke_max_p99_ms
        if target == "local":
            registry, version, transport = _local_endpoint(name, stage)
        else:
            registry, version, transport = _sagemaker_endpoint(cfg.region, name)
        try:
            result = smoke.run(transport, limit, expected_version=str(version) if target == "local" else None)
        finally:
            transport.close()
        record = registry.record_smoke_test(group, version, stage, result.passed, result.summary, endpoint=name)
    except (smoke.SmokeTestError, RegistryError, stage_config.StageConfigError, deployer.DeployError) as exc:
        fail(str(exc))
    if as_json:
        echo_json({"EndpointName": name, "Stage": stage, "ModelPackageVersion": version, "Passed": result.passed,
                   "Summary": result.summary, "Failures": result.failures, "P99Milliseconds": result.p99_ms,
                   "SmokeTests": record.get("SmokeTests")})
    else:
        for failure in result.failures:
            click.echo(f"  wrong: {failure}", err=True)
        verdict = "PASSED" if result.passed else "FAILED"
        click.echo(f"smoke test {verdict}: {name} ({stage}), {group} version {version}: {result.summary}")
        if result.passed and stage == "staging":
            click.echo(f"recorded; next: mlops gate approve --stage prod --version {version} --comment \"...\"")
    if not result.passed:
        raise SystemExit(1)


def _local_endpoint(name: str, stage: str):
    state = deployer.read_state(name)
    if not state or bluegreen.status(state) != bluegreen.IN_SERVICE:
        raise smoke.SmokeTestError(f"endpoint {name} is not running "
                                   f"(mlops deploy --target local --stage {stage} --background)")
    return get_registry("local"), int(state["ModelPackageVersion"]), smoke.HttpTransport(state["Url"])


def _sagemaker_endpoint(region: str, name: str):
    import boto3

    from mlops.aws import endpoint_stack

    sagemaker = boto3.client("sagemaker", region_name=region)
    served = endpoint_stack.served_package(sagemaker, name)  # refuses an endpoint that is not InService
    registry = get_registry("sagemaker", sagemaker_client=sagemaker, region=region)
    runtime = boto3.client("sagemaker-runtime", region_name=region)
    return registry, served["ModelPackageVersion"], smoke.SageMakerTransport(runtime, name)


@click.group()
def gate() -> None:
    """The manual gate before prod: approve or reject a version that passed staging's smoke test."""


def _gate_command(decision: str):
    verb = "approve" if decision == APPROVED else "reject"

    @gate.command(verb, help=f"{verb.capitalize()} a version for prod, with an audit trail (who, when, comment).")
    @TARGET
    @click.option("--stage", type=click.Choice(list(GATED_STAGES)), required=True)
    @GROUP
    @click.option("--version", type=click.IntRange(min=1), default=None,
                  help="Model version [default: the newest Approved one that passed staging's smoke test; on "
                       "SageMaker the one the deploy pipeline waits for].")
    @click.option("--comment", required=True, help="Why: the audit trail keeps it.")
    @click.option("--approver", default=None, help="Who decides [default: $USER locally, the STS caller on AWS].")
    @click.option("--pipeline-name", envvar="MLOPS_DEPLOY_PIPELINE", default=None,
                  help="sagemaker: the deploy CodePipeline [default: <group>-deploy].")
    @click.pass_context
    def command(ctx: click.Context, target: str, stage: str, group: str | None, version: int | None, comment: str,
                approver: str | None, pipeline_name: str | None) -> None:
        cfg = config(ctx)
        group = group or cfg.model_package_group
        try:
            if target == "local":
                record = get_registry("local").decide_gate(group, stage, decision, comment, version, approver)
                answered = None
            else:
                from mlops.aws import gate as aws_gate

                record, answered = aws_gate.decide(cfg.region, group, stage, decision, comment, version, approver,
                                                   pipeline_name or f"{group}-deploy")
        except RegistryError as exc:
            fail(str(exc))
        entry = record["GateHistory"][-1]
        click.echo(f"{group} version {record['ModelPackageVersion']}: {stage} gate {entry['Decision']} by "
                   f"{entry['By']} at {entry['Time']:%Y-%m-%d %H:%M:%S} UTC (\"{entry['Comment']}\")")
        if target == "sagemaker":
            click.echo(answered or "no manual approval was waiting in the deploy pipeline: recorded in the registry")
        elif decision == APPROVED:
            click.echo(f"next: mlops deploy --target local --stage {stage} --version {record['ModelPackageVersion']}")

    return command


approve = _gate_command(APPROVED)
reject = _gate_command(REJECTED)
