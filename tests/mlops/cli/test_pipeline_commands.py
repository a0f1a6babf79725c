"""`mlops run` (local target, the default) stages code and data, then hands the built definition to
mlops.local.commands; failures there become a clear message and a non-zero exit."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlops.definition.model import DefinitionError
from pipelines.source_bundle import code_location, collect_bundle


@pytest.fixture
def local(monkeypatch, tmp_path):
    from mlops.local import commands

    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    for var in ("MLOPS_ROLE_ARN", "MLOPS_BUCKET", "MLOPS_PIPELINE_NAME", "MLOPS_REGION"):
        monkeypatch.delenv(var, raising=False)
    calls = {}
    status = {"value": "Succeeded"}

    def run(definition, parameters, *, pipeline_name, wait=True):
        if parameters.get("CnnEpochs") == "0":
            raise DefinitionError("CnnEpochs: must be positive")
        calls.update(definition=definition, parameters=parameters, pipeline_name=pipeline_name, wait=wait)
        return "exec123"

    monkeypatch.setattr(commands, "run", run)
    monkeypatch.setattr(commands, "describe_execution", lambda execution_id: {
        "PipelineExecutionStatus": status["value"], "FailureReason": "CNN accuracy 0.5 must be >= 0.99"})
    return calls, status


def test_run_local_is_the_default(local, tmp_path):
    from mlops.cli import main
    from mlops.store import s3_uri_to_path

    calls, status = local
    result = CliRunner().invoke(main, ["run", "--param", "CnnEpochs=2"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("exec123")
    assert calls["parameters"] == {"CnnEpochs": "2"} and calls["pipeline_name"] == "image-classification"
    assert calls["wait"] is True
    names = {step["Name"] for step in calls["definition"]["Steps"]}
    assert {"Preprocess", "TrainCNN", "TuneCNN", "Evaluate", "CheckAccuracy"} <= names
    # code and data were staged into the local store where the definition points
    bundle = collect_bundle()
    staged = code_location("mlops-local", "image-classification", bundle)
    assert s3_uri_to_path(staged.tarball_uri).read_bytes() == bundle.tarball()
    assert s3_uri_to_path("s3://mlops-local/data/mnist/train-labels-idx1-ubyte.gz").is_file()

    status["value"] = "Failed"
    failed = CliRunner().invoke(main, ["run", "--no-wait"])
    assert calls["wait"] is False and failed.exit_code == 0  # not waited for: no status to judge
    failed = CliRunner().invoke(main, ["run"])
    assert failed.exit_code == 1 and "ended Failed: CNN accuracy 0.5" in failed.output


def test_run_local_stages_pretrained_weights_given_as_a_path(local, tmp_path):
    from mlops.cli import main
    from mlops.store import s3_uri_to_path

    calls, _ = local
    weights = tmp_path / "resnet 18.pth"
    weights.write_bytes(b"state dict bytes")
    result = CliRunner().invoke(main, ["run", "--param", "CnnArchitecture=resnet18",
                                       "--param", f"PretrainedWeightsUrl=file://{weights.as_posix().replace(' ', '%20')}"])
    assert result.exit_code == 0, result.output
    uri = calls["parameters"]["PretrainedWeightsUrl"]
    assert uri.startswith("s3://mlops-local/pretrained/local/") and f"staged as {uri}" in result.output
    assert s3_uri_to_path(uri + "resnet 18.pth").read_bytes() == b"state dict bytes"
    assert s3_uri_to_path("s3://mlops-local/pretrained/none/README.txt").is_file()  # the default's note, always
    passed = CliRunner().invoke(main, ["run", "--param", "PretrainedWeightsUrl=s3://elsewhere/r18.pth"])
    assert passed.exit_code == 0 and calls["parameters"]["PretrainedWeightsUrl"] == "s3://elsewhere/r18.pth"
    calls.clear()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("no weights")
    refused = CliRunner().invoke(main, ["run", "--param", f"PretrainedWeightsUrl={notes}"])
    assert refused.exit_code == 1 and "expected one *.pth or *.pt state dict file, found 0" in refused.output
    assert calls == {}  # nothing ran


def test_run_sagemaker_uploads_a_local_weights_path_first(tmp_path, monkeypatch):
    """--target sagemaker: a local PretrainedWeightsUrl goes to S3 (sums last) and the note to the default prefix."""
    from mlops import staging
    from mlops.cli import pipeline as cli_pipeline
    from mlops.definition.build import build_definition
    from mlops.definition.config import LOCAL_ROLE_ARN, PipelineConfig
    from tests.mlops.test_staging import _FakeS3

    config = PipelineConfig(region="us-east-1", role=LOCAL_ROLE_ARN, bucket="bkt", pipeline_name="image-classification",
                            model_package_group="image-classification")
    built = build_definition(config)
    client = _FakeS3()
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"w")
    overrides = {"PretrainedWeightsUrl": str(weights), "InputDataUrl": "s3://bkt/data/x/"}
    cli_pipeline.stage_inputs(config, built, overrides, lambda bundle, staged: [], lambda local, uri: [],
                               lambda source, bucket, target: staging.stage_local_path_to_s3(source, bucket, client,
                                                                                              target),
                               lambda uri: staging.stage_no_weights_note_to_s3(uri, client))
    keys = [key for _, key in client.objects]
    prefix = overrides["PretrainedWeightsUrl"].removeprefix("s3://bkt/")
    assert prefix.startswith("pretrained/local/")
    assert keys == ["pretrained/none/README.txt", f"{prefix}resnet18.pth", f"{prefix}SHA256SUMS"]
    assert overrides["InputDataUrl"] == "s3://bkt/data/x/"


def test_run_local_refuses_bad_parameters(local):
    from mlops.cli import main

    calls, _ = local
    for argv, message in ((["run", "--param", "CnnEpochs"], "expected Name=Value"),
                          (["run", "--param", "Bogus=1"], "not a parameter of this pipeline"),
                          (["run", "--param", "CnnEpochs=0"], "CnnEpochs: must be positive"),
                          (["run", "--tag", "oops"], "--tag 'oops': expected Name=Value")):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 1 and message in result.output, (argv, result.output)
        assert "Traceback" not in result.output
    assert calls == {}


def test_definition_normalised_flag(monkeypatch):
    import json

    from mlops.cli import main

    monkeypatch.delenv("MLOPS_ROLE_ARN", raising=False)
    result = CliRunner().invoke(main, ["definition", "--normalised"])
    assert result.exit_code == 0
    text = json.dumps(json.loads(result.output))
    assert "/code/<code-hash>/" in text and "sagemaker_job_name" not in text


def test_framework_option_builds_validates_and_runs_tensorflow(local):
    """--framework tensorflow: train_keras.py in the TensorFlow image, a TensorFlow Serving model registered; the
    built definition validates and is what `mlops run` hands on; a built file refuses the option."""
    import json

    from mlops.cli import main

    runner = CliRunner()
    validated = runner.invoke(main, ["validate", "--framework", "tensorflow"])
    assert validated.exit_code == 0, validated.output
    assert "valid (9 steps checked" in validated.output
    calls, _ = local
    result = runner.invoke(main, ["run", "--framework", "tensorflow", "--param", "CnnEpochs=2"])
    assert result.exit_code == 0, result.output
    text = json.dumps(calls["definition"])
    assert "training/train_keras.py" in text and "train_cnn.py" not in text
    assert "tensorflow-training:2.19-cpu-py312" in text and "tensorflow-inference:2.19-cpu" in text
    assert "pytorch" not in text.lower().replace("sagemaker.pytorch", "")
    refused = runner.invoke(main, ["run", "--framework", "tensorflow", "--definition", "x.json"])
    assert refused.exit_code != 0 and "--framework" in refused.output
