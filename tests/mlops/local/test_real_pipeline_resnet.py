"""ResNet18 transfer learning through the real definition: ``mlops run`` with CnnArchitecture=resnet18 on an image
folder the test generates, PretrainedWeightsUrl a state dict it generates (a local path, staged with checksums),
then the registered model approved, deployed to the local endpoint and answering with the folder's class names."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from mlops.cli import main
from mlops.local import commands, records
from mlops.registry import LocalRegistry
from mlops.store import s3_uri_to_path
from tests.helpers import free_port
from tests.training.test_formats import make_image_folder

PARAMS = {"CnnEpochs": "10", "XGBoostNumRound": "10", "TuningMaxJobs": "1", "TuningMaxParallelJobs": "1",
          "AccuracyThreshold": "0.5", "DataFormat": "image-folder", "ImageSize": "28", "CnnArchitecture": "resnet18"}


def generated_resnet18_weights(path: Path) -> Path:
    """A torchvision ResNet18 state dict made here: random weights whose BatchNorm statistics are measured on
    ImageNet-normalised noise (as pretraining would leave them), so the frozen layers give well-scaled features."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average over the calibration batches
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(32, 3, 28, 28))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def mlops(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture()
def home(tmp_path: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(tmp_path / "mlops"))
        patch.setenv("MLOPS_CPUS", "2")
        yield tmp_path / "mlops"


@pytest.mark.slow
def test_resnet18_fine_tunes_from_a_local_state_dict_registers_and_serves(home: Path, tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "bugs", {"ant": 30, "bee": 30, "fly": 30}, size=28, mode="L")
    weights = generated_resnet18_weights(tmp_path / "my weights" / "resnet18.pth")  # never downloaded

    argv = ["run"] + [item for name, value in {**PARAMS, "InputDataUrl": str(data),
                                               "PretrainedWeightsUrl": str(weights)}.items()
                      for item in ("--param", f"{name}={value}")]
    output = CliRunner().invoke(main, argv).output
    execution_id = commands.list_executions()[0]["PipelineExecutionId"]
    assert commands.describe_execution(execution_id)["PipelineExecutionStatus"] == "Succeeded", output
    assert "weights " + str(weights) + " staged as s3://mlops-local/pretrained/local/" in output
    # the default prefix holds its note whatever the run was given
    assert s3_uri_to_path("s3://mlops-local/pretrained/none/README.txt").is_file()

    steps = {s.step_name: s for s in records.list_steps(execution_id)}
    log = mlops("executions", "logs", execution_id, "TrainCNN").output
    assert "resnet18: loaded pretrained weights from " in log and "(120 tensors)" in log, log[-3000:]
    trial_logs = mlops("executions", "logs", execution_id, "TuneCNN").output
    assert "pretrained" not in trial_logs  # the trials get no weights channel
    model_uri = steps["TrainCNN"].properties["ModelArtifacts"]["S3ModelArtifacts"]
    with tarfile.open(s3_uri_to_path(model_uri)) as tar:
        config = json.load(tar.extractfile("model_config.json"))
    assert config["architecture"] == "resnet18" and config["class_names"] == ["ant", "bee", "fly"]
    package = LocalRegistry().list_model_packages("image-classification")[0]
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == model_uri

    # approve, deploy to the local staging endpoint, and ask it over HTTP
    assert mlops("registry", "approve", "--version", str(package["ModelPackageVersion"]),
                 "--approver", "test").exit_code == 0
    port = free_port()
    started = mlops("deploy", "--target", "local", "--port", str(port), "--workers", "1", "--background")
    assert started.exit_code == 0, started.output
    try:
        from PIL import Image

        for name in ("ant", "bee", "fly"):  # a batch of each class's images: most are named right
            images = [np.asarray(Image.open(path).convert("L").resize((28, 28)), dtype=float).tolist()
                      for path in sorted((data / "train" / name).iterdir())[:8]]
            body = tmp_path / f"{name}.json"
            body.write_text(json.dumps({"instances": images}))
            result = mlops("invoke", "--file", str(body), "--url", f"http://127.0.0.1:{port}/invocations")
            assert result.exit_code == 0, result.output
            answers = json.loads(result.output)["predictions"]
            named = [answer["class_name"] for answer in answers]
            assert named.count(name) >= 6, (name, named)
            assert {entry["class_name"] for entry in answers[0]["top_k"]} == {"ant", "bee", "fly"}
    finally:
        mlops("deploy", "--stop")
