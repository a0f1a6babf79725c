"""The offline validator: the built definition passes, and definitions broken on purpose are each caught."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest

from mlops.definition.build import build_definition
from mlops.definition.config import LOCAL_BUCKET, LOCAL_ROLE_ARN, PipelineConfig
from mlops.definition.model import iter_steps
from mlops.definition.validate import errors_only, validate_definition

CONFIG = PipelineConfig(region="us-east-1", role=LOCAL_ROLE_ARN, bucket=LOCAL_BUCKET)


@pytest.fixture(scope="module")
def definition() -> dict:
    return build_definition(CONFIG)


def step(definition: dict, name: str) -> dict:
    return next(s for s, _, _ in iter_steps(definition["Steps"]) if s["Name"] == name)


def broken(definition: dict, change: Callable[[dict], None]) -> list[str]:
    changed = copy.deepcopy(definition)
    change(changed)
    return [str(issue) for issue in errors_only(validate_definition(changed))]


def test_built_definition_is_valid(definition):
    issues = validate_definition(definition)
    assert issues == [], [str(i) for i in issues]


def test_every_step_is_checked_against_its_api_shape(definition, monkeypatch):
    """Prove the shape check runs for each job step type by breaking one field in each."""
    for name, operation in (("Preprocess", "CreateProcessingJob"), ("TrainCNN", "CreateTrainingJob"),
                            ("TuneCNN", "CreateHyperParameterTuningJob"),
                            ("Register-RegisterModel", "CreateModelPackage")):
        errors = broken(definition, lambda d, n=name: step(d, n)["Arguments"].update(NotAField=1))
        assert len(errors) == 1 and f"[{name}]" in errors[0] and operation in errors[0] and "NotAField" in errors[0]


CASES = {
    "unknown key": (
        lambda d: step(d, "TrainCNN")["Arguments"]["ResourceConfig"].update(Bogus=1),
        ["[TrainCNN]", 'Unknown parameter in ResourceConfig: "Bogus"']),
    "missing required field": (
        lambda d: step(d, "Preprocess")["Arguments"].pop("AppSpecification"),
        ["[Preprocess]", 'Missing required parameter in Arguments: "AppSpecification"']),
    "missing nested required field": (
        lambda d: step(d, "TrainXGBoost")["Arguments"]["OutputDataConfig"].pop("S3OutputPath"),
        ["[TrainXGBoost]", "OutputDataConfig", '"S3OutputPath"']),
    "wrong type": (
        lambda d: step(d, "TrainCNN")["Arguments"]["StoppingCondition"].update(MaxRuntimeInSeconds="86400"),
        ["[TrainCNN]", "StoppingCondition.MaxRuntimeInSeconds", "valid types: <class 'int'>"]),
    "bad instance type": (
        lambda d: step(d, "TrainXGBoost")["Arguments"]["ResourceConfig"].update(InstanceType="ml.m5.huge"),
        ["[TrainXGBoost]", "ResourceConfig.InstanceType", "'ml.m5.huge' is not a valid TrainingInstanceType"]),
    "bad instance type as a parameter default": (
        lambda d: next(p for p in d["Parameters"] if p["Name"] == "ProcessingInstanceType").update(
            DefaultValue="ml.bogus"),
        ["[Preprocess]", "'ml.bogus' (default of ProcessingInstanceType) is not a valid ProcessingInstanceType"]),
    "bad approval status": (
        lambda d: step(d, "Register-RegisterModel")["Arguments"].update(ModelApprovalStatus="Maybe"),
        ["[Register-RegisterModel]", "'Maybe' is not a valid ModelApprovalStatus"]),
    "dangling output name": (
        lambda d: step(d, "TrainCNN")["Arguments"]["InputDataConfig"][0]["DataSource"]["S3DataSource"].update(
            S3Uri={"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['nope'].S3Output.S3Uri"}),
        ["[TrainCNN]", "no item named 'nope'", "['test', 'train', 'validation']"]),
    "dangling property": (
        lambda d: step(d, "Evaluate")["Arguments"]["ProcessingInputs"][1]["S3Input"].update(
            S3Uri={"Get": "Steps.TrainCNN.ModelArtifacts.S3ModelArtifactz"}),
        ["[Evaluate]", "ModelArtifacts has no member 'S3ModelArtifactz'"]),
    "dangling step": (
        lambda d: step(d, "Evaluate")["Arguments"]["ProcessingInputs"][1]["S3Input"].update(
            S3Uri={"Get": "Steps.Nope.ModelArtifacts.S3ModelArtifacts"}),
        ["[Evaluate]", "names step 'Nope', which does not exist"]),
    "dangling property file": (
        lambda d: step(d, "Evaluate")["PropertyFiles"][0].update(PropertyFileName="Other"),
        ["[CheckAccuracy]", "declares no such property file"]),
    "property file on a missing output": (
        lambda d: step(d, "Evaluate")["PropertyFiles"][0].update(OutputName="nowhere"),
        ["[Evaluate]", "PropertyFiles[0].OutputName", "'nowhere'"]),
    "undeclared parameter": (
        lambda d: d["Parameters"].pop(0),
        ["[Preprocess]", "parameter 'InputDataUrl' is not declared"]),
    "parameter of the wrong type": (
        lambda d: step(d, "TrainCNN")["Arguments"]["ResourceConfig"].update(
            InstanceCount={"Get": "Parameters.TrainingInstanceType"}),
        ["[TrainCNN]", "gives a String value but the field takes a integer value"]),
    "join where a number is expected": (
        lambda d: step(d, "TrainCNN")["Arguments"]["StoppingCondition"].update(
            MaxRuntimeInSeconds={"Std:Join": {"On": "", "Values": ["1"]}}),
        ["[TrainCNN]", "Std:Join gives a String value"]),
    "unknown execution variable": (
        lambda d: step(d, "Preprocess")["Arguments"]["ProcessingInputs"][1]["S3Input"].update(
            S3Uri={"Get": "Execution.Nope"}),
        ["[Preprocess]", "Execution.Nope is not one of"]),
    "cycle": (
        lambda d: step(d, "Preprocess").update(DependsOn=["Evaluate"]),
        ["[<pipeline>]", "cycle", "Preprocess"]),
    "depends on a missing step": (
        lambda d: step(d, "Evaluate").update(DependsOn=["Ghost"]),
        ["[Evaluate]", "DependsOn", "'Ghost'"]),
    "duplicate step name": (
        lambda d: d["Steps"].append(copy.deepcopy(step(d, "TrainCNN"))),
        ["[TrainCNN]", "used more than once"]),
    "bad condition type": (
        lambda d: step(d, "CheckAccuracy")["Arguments"]["Conditions"][0].update(Type="Bigger"),
        ["[CheckAccuracy]", "'Bigger' is not one of"]),
    "parameter default of the wrong type": (
        lambda d: next(p for p in d["Parameters"] if p["Name"] == "CnnEpochs").update(DefaultValue="six"),
        ["[<pipeline>]", "Parameters.CnnEpochs", "is not a Integer"]),
    "string too long": (
        lambda d: step(d, "Register-RegisterModel")["Arguments"].update(ModelPackageDescription="x" * 2000),
        ["[Register-RegisterModel]", "ModelPackageDescription", "longer than"]),
    "pattern": (
        lambda d: step(d, "TrainCNN")["Arguments"].update(RoleArn="not-an-arn"),
        ["[TrainCNN]", "RoleArn", "does not match the pattern"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_definition_is_caught(definition, case):
    change, expected = CASES[case]
    errors = broken(definition, change)
    assert errors, f"{case}: not caught"
    assert any(all(part in error for part in expected) for error in errors), (case, errors)


def test_unknown_step_type_is_a_warning_not_an_error(definition):
    changed = copy.deepcopy(definition)
    changed["Steps"].append({"Name": "Notify", "Type": "Lambda", "Arguments": {"x": {"Get": "Parameters.Nope"}}})
    issues = validate_definition(changed)
    assert any(i.severity == "warning" and i.step == "Notify" for i in issues)
    assert [str(i) for i in errors_only(issues)] == [
        "ERROR [Notify] Arguments.x: parameter 'Nope' is not declared in Parameters"]


def test_not_a_definition():
    assert errors_only(validate_definition({"Steps": "nope"}))
    assert errors_only(validate_definition([]))  # type: ignore[arg-type]


def test_cli_definition_then_validate(tmp_path, monkeypatch):
    """`mlops definition` then `mlops validate FILE` pass; a broken file fails with a non-zero exit."""
    from click.testing import CliRunner

    from mlops.cli import main

    for var in ("MLOPS_ROLE_ARN", "MLOPS_BUCKET", "MLOPS_PIPELINE_NAME", "MLOPS_REGION"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()
    out = tmp_path / "definition.json"
    result = runner.invoke(main, ["definition", "--output", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["validate", str(out)])
    assert result.exit_code == 0, result.output
    assert "valid (9 steps checked" in result.output

    stdout = runner.invoke(main, ["definition"])
    assert stdout.exit_code == 0 and json.loads(stdout.output) == json.loads(out.read_text())

    definition = json.loads(out.read_text())
    step(definition, "TrainCNN")["Arguments"]["ResourceConfig"]["InstanceType"] = "ml.nope"
    step(definition, "Evaluate")["Arguments"]["Unknown"] = 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(definition))
    result = runner.invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "[TrainCNN]" in result.output and "[Evaluate]" in result.output and "2 error(s)" in result.output

    for content, message in (("{", "not valid JSON"), ("[]", "not a pipeline definition")):
        bad.write_text(content)
        result = runner.invoke(main, ["validate", str(bad)])
        assert result.exit_code == 1 and message in result.output
    result = runner.invoke(main, ["validate", str(tmp_path / "missing.json")])
    assert result.exit_code == 1 and "no such file" in result.output
