"""The one model of a definition: steps and branches, the graph, references, parameters and their conversion."""

from __future__ import annotations

import pytest

from mlops.definition.build import build_definition
from mlops.definition.config import PipelineConfig
from mlops.definition.grammar import PathError, parse_path, referenced_parameters, referenced_steps, references
from mlops.definition.model import DefinitionError, convert_value, parse


def _step(name, kind="Processing", **extra):
    return {"Name": name, "Type": kind, "Arguments": extra.pop("Arguments", {}), **extra}


def _messages(raw) -> list[str]:
    return [f"{issue.step} {issue.path}: {issue.message}" for issue in parse(raw).issues]


def test_property_path_grammar():
    assert parse_path("a.b['c.d'][3].e") == ["a", "b", "c.d", 3, "e"]
    assert parse_path(".Outputs[\"x\"]") == ["Outputs", "x"]
    with pytest.raises(PathError, match="cannot parse property path"):
        parse_path("a..b")
    value = {"A": {"Get": "Steps.Prep.ProcessingOutputConfig.Outputs['train'].S3Output.S3Uri"},
             "B": {"Std:Join": {"On": "/", "Values": [{"Get": "Parameters.Bucket"}, {"Get": "Execution.PipelineName"}]}},
             "C": [{"Std:JsonGet": {"PropertyFile": {"Get": "Steps.Eval.PropertyFiles.Report"}, "Path": "x"}}]}
    assert referenced_steps(value) == {"Prep", "Eval"}
    assert referenced_parameters(value) == {"Bucket"}
    assert [path for path, _ in references(value, "Arguments")] == [
        "Arguments.A", "Arguments.B.Std:Join.Values[0]", "Arguments.B.Std:Join.Values[1]",
        "Arguments.C[0].Std:JsonGet.PropertyFile"]


def test_graph_from_depends_on_references_and_condition_branches():
    raw = {"Parameters": [], "Steps": [
        _step("A"),
        _step("B", "Training", Arguments={"X": {"Get": "Steps.A.ProcessingJobName"}}),
        _step("C", DependsOn=["A"]),
        {"Name": "Check", "Type": "Condition", "Arguments": {
            "Conditions": [{"Type": "Equals", "LeftValue": {"Get": "Steps.B.TrainingJobName"}, "RightValue": "x"}],
            "IfSteps": [_step("Reg", "RegisterModel")], "ElseSteps": [_step("Stop", "Fail")]}},
    ]}
    definition = parse(raw).check()
    assert definition.steps["B"].upstream == {"A"}
    assert definition.steps["Check"].upstream == {"B"}
    assert definition.steps["Reg"].upstream == {"Check"} and definition.steps["Reg"].condition_branch is True
    assert definition.steps["Stop"].condition_branch is False
    assert definition.order() == ["A", "B", "C", "Check", "Reg", "Stop"]
    assert definition.downstream("A") == {"B", "C", "Check", "Reg", "Stop"}


def test_every_problem_is_reported_at_once():
    raw = {"Parameters": [{"Name": "N", "Type": "Integer", "DefaultValue": "3"},
                          {"Name": "N", "Type": "Integer"}, {"Name": "E", "Type": "String", "DefaultValue": "x",
                                                             "EnumValues": ["a"]}, {"Type": "Float"}],
           "Steps": [_step("A", DependsOn=["Ghost"], Arguments={
               "X": {"Get": "Steps.Nope.ProcessingJobName"}, "Y": {"Get": "Parameters.Missing"},
               "Z": {"Get": "Execution.Tomorrow"}, "W": {"Get": "Steps.A.ProcessingJobName"},
               "V": {"Get": "Somewhere.Else"}, "U": {"Get": "Steps.B"}}),
               _step("A"), _step("B"), {"Type": "Fail"}]}
    messages = _messages(raw)
    for expected in ("DefaultValue '3' is not a Integer", "Parameters.N: declared twice",
                     "DefaultValue 'x' is not one of its EnumValues", "Parameters[3]: a parameter needs a string Name",
                     "A DependsOn: names step 'Ghost', which does not exist",
                     "A Arguments.X: 'Steps.Nope.ProcessingJobName' names step 'Nope', which does not exist",
                     "A Arguments.Y: parameter 'Missing' is not declared", "A Arguments.Z: Execution.Tomorrow is not",
                     "A Arguments.W: 'Steps.A.ProcessingJobName': a step cannot read its own properties",
                     "A Arguments.V: 'Somewhere.Else': a reference is Parameters.", "needs a property path",
                     "A Name: step name used more than once", "a step needs a non-empty string Name"):
        assert any(expected in message for message in messages), (expected, messages)
    with pytest.raises(DefinitionError, match=r"the pipeline definition is not valid: .* \(and \d+ more\)"):
        parse(raw).check()


def test_cycles_are_refused():
    with pytest.raises(DefinitionError, match="cycle: "):
        parse({"Steps": [_step("A", DependsOn=["B"]), _step("B", Arguments={
            "X": {"Get": "Steps.A.ProcessingJobName"}})]}).check()


def test_parameter_conversion():
    assert convert_value("N", "Integer", "42") == 42 and convert_value("N", "Integer", 7) == 7
    assert convert_value("F", "Float", "1e-3") == 0.001 and convert_value("F", "Float", 2) == 2.0
    assert convert_value("B", "Boolean", "TRUE") is True
    assert convert_value("S", "String", "x") == "x"
    for kind, value in (("Integer", "4.0"), ("Integer", True), ("Float", "nan"), ("Float", "inf"), ("Float", "x"),
                        ("Float", True), ("Boolean", "yes"), ("String", 3)):
        with pytest.raises(DefinitionError, match=f"parameter P is {kind}"):
            convert_value("P", kind, value)
    definition = parse({"Parameters": [{"Name": "Required", "Type": "String"}], "Steps": []})
    with pytest.raises(DefinitionError, match="has no default"):
        definition.resolve_parameters({})


def test_overrides_of_the_real_definition():
    definition = parse(build_definition(PipelineConfig().for_local())).check()
    values = definition.resolve_parameters({"CnnEpochs": "2", "AccuracyThreshold": "0.5"})
    assert values["CnnEpochs"] == 2 and values["AccuracyThreshold"] == 0.5 and values["TuningStrategy"] == "Bayesian"
    unknown = "unknown parameter.s. Nope: not a parameter of this pipeline; its parameters are: InputDataUrl .String."
    for bad, message in (({"Nope": "1"}, unknown),
                         ({"CnnEpochs": "two"}, "parameter CnnEpochs is Integer, got 'two'"),
                         ({"AccuracyThreshold": "high"}, "parameter AccuracyThreshold is Float"),
                         ({"ModelApprovalStatus": "Maybe"}, "is not one of")):
        with pytest.raises(DefinitionError, match=message):
            definition.resolve_parameters(bad)
