"""Building the definition JSON: config from the environment, stabilise and normalise."""

from __future__ import annotations

import copy

import pytest

from mlops.definition.build import normalise, stabilise
from mlops.definition.config import LOCAL_ROLE_ARN, PipelineConfig


def test_stabilise_and_normalise():
    raw = {"Steps": [{"Name": "T", "Type": "Tuning", "Arguments": {"TrainingJobDefinition": {
        "StaticHyperParameters": {"sagemaker_job_name": '"x-2026-01-02-03-04-05-678"', "a": "1"}}}},
        {"Name": "C", "Type": "Condition", "Arguments": {"IfSteps": [{"Name": "X", "Type": "Training", "Arguments": {
            "HyperParameters": {"sagemaker_job_name": "j", "sagemaker_submit_directory":
                                '"s3://b/p/code/' + "a" * 64 + '/sourcedir.tar.gz"'},
            "Name": "name-2026-01-02-03-04-05-678"}}]}}]}
    before = copy.deepcopy(raw)
    stable = stabilise(raw)
    assert raw == before, "stabilise must not modify its input"
    assert stable["Steps"][0]["Arguments"]["TrainingJobDefinition"]["StaticHyperParameters"] == {"a": "1"}
    nested = normalise(raw)["Steps"][1]["Arguments"]["IfSteps"][0]["Arguments"]
    assert nested["HyperParameters"] == {"sagemaker_submit_directory": '"s3://b/p/code/<code-hash>/sourcedir.tar.gz"'}
    assert nested["Name"] == "name-<timestamp>"


def test_config_from_env():
    config = PipelineConfig.from_env({"MLOPS_REGION": "eu-west-1", "MLOPS_BUCKET": "bkt"}, pipeline_name="p")
    assert (config.region, config.bucket, config.pipeline_name, config.role) == ("eu-west-1", "bkt", "p", None)
    assert config.for_local().role == LOCAL_ROLE_ARN
    with pytest.raises(ValueError, match="MLOPS_ROLE_ARN"):
        config.require_aws()
