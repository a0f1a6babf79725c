"""The ``mlops`` command. Every subcommand is registered here, explicitly; importing a module adds nothing.

    mlops definition | validate | run                    (mlops.cli.pipeline)
    mlops executions list|describe|steps|logs|retry|report  (mlops.cli.executions)
    mlops registry list|describe|approve|reject          (mlops.cli.registry)
    mlops deploy | endpoints list | invoke               (mlops.cli.endpoint)
    mlops smoke-test | gate approve|reject               (mlops.cli.stage)
    mlops experiment                                     (mlops.cli.experiment)

The top-level options (also MLOPS_* variables) become ``ctx.obj``, a PipelineConfig every command reads
through :func:`mlops.cli.common.config`; errors go through :func:`mlops.cli.common.fail`.
"""

from __future__ import annotations

import click

from mlops.cli.endpoint import deploy, endpoints, invoke
from mlops.cli.executions import executions
from mlops.cli.experiment import experiment
from mlops.cli.pipeline import definition, run, validate
from mlops.cli.registry import registry
from mlops.cli.stage import gate, smoke_test
from mlops.definition.config import PipelineConfig


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--region", envvar="MLOPS_REGION", default="us-east-1", show_default=True, help="AWS region.")
@click.option("--role-arn", envvar="MLOPS_ROLE_ARN", help="IAM role the pipeline and its jobs run as.")
@click.option("--bucket", envvar="MLOPS_BUCKET", help="S3 bucket for code, data and artifacts [local: mlops-local].")
@click.option("--pipeline-name", envvar="MLOPS_PIPELINE_NAME", default="image-classification", show_default=True)
@click.option("--model-package-group", envvar="MLOPS_MODEL_PACKAGE_GROUP", default="image-classification",
              show_default=True)
@click.pass_context
def main(ctx: click.Context, region: str, role_arn: str | None, bucket: str | None, pipeline_name: str,
         model_package_group: str) -> None:
    """Image-classification MLOps pipeline: local runs with no AWS account, or SageMaker."""
    ctx.obj = PipelineConfig.from_env(region=region, role=role_arn, bucket=bucket, pipeline_name=pipeline_name,
                                      model_package_group=model_package_group)


for command in (definition, validate, run, executions, registry, deploy, endpoints, invoke, smoke_test, gate,
                experiment):
    main.add_command(command)
