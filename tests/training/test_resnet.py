"""resnet18: torchvision's keys and layout, frozen layers up to layer3, input normalisation inside the net,
pretrained weights from a state dict the tests generate (nothing is downloaded), and the job's weights channel."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from training import train_cnn
from training.datasets import Split, sha256_file
from training.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainedWeightsError,
    ResNet18,
    build_model,
    count_parameters,
    load_pretrained,
)

NORM = {"scale": 1.0 / 255.0, "mean": 0.31, "std": 0.27}
TRAINABLE_BACKBONE = 8_393_728  # layer4's parameters in torchvision's resnet18


def _torchvision_state(num_classes: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision ResNet18 state dict with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(_torchvision_state(), path)
    return path


def _imagenet_normalised(pixels: torch.Tensor) -> torch.Tensor:
    rgb = pixels.expand(-1, 3, -1, -1) / 255.0
    return (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_state_dict_keys_and_shapes_are_torchvisions() -> None:
    ours = build_model("resnet18", 5, normalization=NORM).state_dict()
    theirs = torchvision.models.resnet18(weights=None).state_dict()
    assert list(ours) == list(theirs)  # same names, same order; the input buffers are not saved
    assert {k for k in ours if ours[k].shape != theirs[k].shape} == {"fc.weight", "fc.bias"}
    assert ours["fc.weight"].shape == (5, 512)


def test_a_torchvision_state_dict_loads_and_gives_torchvisions_outputs(weights_file: Path) -> None:
    """Same weights, same answers: our net on pipeline-normalised grayscale == torchvision on ImageNet-normalised RGB."""
    ours = build_model("resnet18", 1000, normalization=NORM, image_size=32)
    loaded, skipped = load_pretrained(ours, weights_file)
    assert skipped == [] and loaded == len(torchvision.models.resnet18().state_dict())
    reference = torchvision.models.resnet18(weights=None)
    reference.load_state_dict(torch.load(weights_file, weights_only=True))
    pixels = torch.rand(4, 1, 32, 32) * 255
    pipeline_input = (pixels * NORM["scale"] - NORM["mean"]) / NORM["std"]
    ours.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.allclose(ours(pipeline_input), reference(_imagenet_normalised(pixels)), atol=1e-4, rtol=1e-4)


def test_a_head_of_another_size_is_skipped_and_reported(weights_file: Path) -> None:
    model = build_model("resnet18", 3, normalization=NORM)
    head = model.fc.weight.detach().clone()
    loaded, skipped = load_pretrained(model, weights_file)
    assert skipped == ["fc.bias", "fc.weight"] and loaded == len(model.state_dict()) - 2
    assert torch.equal(model.fc.weight, head)  # the new head keeps its initialisation
    assert torch.equal(model.layer4[1].conv2.weight, torch.load(weights_file, weights_only=True)["layer4.1.conv2.weight"])


def test_imagenet_files_without_num_batches_tracked_and_checkpoints_load(tmp_path: Path) -> None:
    state = {k: v for k, v in _torchvision_state().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pth")  # torchvision's own ImageNet files predate that buffer
    assert load_pretrained(build_model("resnet18", 2), tmp_path / "old.pth")[1] == ["fc.bias", "fc.weight"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "ckpt.pt")
    assert load_pretrained(build_model("resnet18", 2), tmp_path / "ckpt.pt")[0] == len(state) - 2


def test_only_layer4_and_fc_train() -> None:
    model = build_model("resnet18", 3, normalization=NORM)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name.split(".")[0] for name, p in model.named_parameters() if not p.requires_grad}
    assert trainable == {"layer4", "fc"} and frozen == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert count_parameters(model) == TRAINABLE_BACKBONE + 512 * 3 + 3
    assert count_parameters(model, trainable_only=False) == 11_178_051
    optimizer = train_cnn.make_optimizer(train_cnn.TrainConfig(architecture="resnet18"), model)
    assert sum(p.numel() for group in optimizer.param_groups for p in group["params"]) == count_parameters(model)


def test_frozen_batchnorms_stay_in_eval_mode_and_keep_their_statistics() -> None:
    model = build_model("resnet18", 3, normalization=NORM)
    model.train()
    assert not model.bn1.training and not model.layer1[0].bn1.training and not model.layer3[1].bn2.training
    assert model.layer4[0].bn1.training and model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = train_cnn.make_optimizer(train_cnn.TrainConfig(architecture="resnet18", lr=0.1), model)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 32, 32)), torch.randint(0, 3, (8,)))
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"layer4", "fc"}  # frozen weights and BatchNorm running stats untouched
    model.eval()
    assert not model.layer4[0].bn1.training


def test_one_channel_is_repeated_to_three() -> None:
    model = build_model("resnet18", 4, normalization=NORM, in_channels=1, image_size=28).eval()
    gray = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(gray), model(gray.repeat(1, 3, 1, 1)), atol=1e-5)
        assert model(gray).shape == (3, 4)
    rgb = build_model("resnet18", 4, normalization=NORM, in_channels=3, image_size=32).eval()
    with torch.no_grad():
        assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="1 or 3 input channels"):
        build_model("resnet18", 4, in_channels=2)


def test_the_normalisation_buffers_are_not_saved_and_follow_the_manifest() -> None:
    model = ResNet18(3, normalization={"scale": 1 / 255, "mean": 0.5, "std": 0.25})
    assert "input_scale" not in model.state_dict() and "input_scale" in dict(model.named_buffers())
    # a normalised 0 is the mean intensity 0.5: in ImageNet terms (0.5 - m) / s per channel
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(model.input_shift.flatten(), expected)


@pytest.mark.parametrize(("content", "message"), [
    (lambda p: p.write_bytes(b"\x00not a zip or a pickle" * 10), "cannot be read as a PyTorch state dict"),
    (lambda p: torch.save([torch.zeros(2)], p), "expected a state dict"),
    (lambda p: torch.save({"conv.weight": torch.zeros(2)}, p), "not a torchvision ResNet18 state dict"),
    (lambda p: torch.save(build_model("compact", 10).state_dict(), p), "not a torchvision ResNet18 state dict"),
    (lambda p: torch.save({**_torchvision_state(), "conv1.weight": torch.zeros(64, 3, 3, 3)}, p),
     "tensor shapes do not match"),
    (lambda p: p.write_bytes(pickle.dumps(Path("/etc/passwd"))), "cannot be read as a PyTorch state dict"),
])
def test_bad_weights_files_name_the_file(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "bad.pth"
    content(path)
    model = build_model("resnet18", 3)
    with pytest.raises(PretrainedWeightsError, match=message) as caught:
        load_pretrained(model, path)
    assert str(path) in str(caught.value)


def test_a_truncated_file_is_refused(tmp_path: Path, weights_file: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    with pytest.raises(PretrainedWeightsError, match=f"{path}: cannot be read"):
        load_pretrained(build_model("resnet18", 3), path)
    with pytest.raises(PretrainedWeightsError, match="no such file"):
        load_pretrained(build_model("resnet18", 3), tmp_path / "absent.pth")


def test_find_pretrained_in_the_weights_channel(tmp_path: Path, weights_file: Path) -> None:
    channel = tmp_path / "weights"
    channel.mkdir()
    assert train_cnn.find_pretrained({}) is None  # no channel (the tuner's trials)
    (channel / "README.txt").write_text("no weights here")
    assert train_cnn.find_pretrained({"SM_CHANNEL_WEIGHTS": str(channel)}) is None  # the default prefix's note
    (channel / "resnet18.pth").write_bytes(weights_file.read_bytes())
    (channel / "SHA256SUMS").write_text(f"{sha256_file(channel / 'resnet18.pth')}  resnet18.pth\n")
    assert train_cnn.find_pretrained({"SM_CHANNEL_WEIGHTS": str(channel)}) == channel / "resnet18.pth"
    (channel / "SHA256SUMS").write_text(f"{'0' * 64}  resnet18.pth\n")
    with pytest.raises(ValueError, match="does not match"):
        train_cnn.find_pretrained({"SM_CHANNEL_WEIGHTS": str(channel)})
    (channel / "SHA256SUMS").unlink()
    (channel / "other.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="expected one"):
        train_cnn.find_pretrained({"SM_CHANNEL_WEIGHTS": str(channel)})


def test_from_scratch_and_pretrained_are_said_in_the_log(weights_file: Path, caplog) -> None:
    config = train_cnn.TrainConfig(architecture="resnet18")
    with caplog.at_level(logging.INFO, logger="train_cnn"):
        train_cnn.prepare_model(config, 3, 1, 28, NORM, pretrained=None)
    assert "training from scratch" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train_cnn"):
        train_cnn.prepare_model(config, 3, 1, 28, NORM, pretrained=weights_file)
    assert f"resnet18: loaded pretrained weights from {weights_file} (120 tensors)" in caplog.text
    assert "skipped fc.bias, fc.weight" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="train_cnn"):
        train_cnn.prepare_model(train_cnn.TrainConfig(), 3, 1, 28, NORM, pretrained=weights_file)
    assert "compact does not take pretrained weights; ignoring" in caplog.text


@pytest.mark.parametrize("architecture", ["resnet18", "compact", "dense"])
def test_a_trailing_batch_of_one_is_dropped(architecture: str) -> None:
    """9 images in batches of 4: the last batch (1 image) would crash BatchNorm on resnet18's 1x1 maps."""
    rng = np.random.default_rng(0)
    train_split = Split(rng.normal(size=(9, 28, 28)).astype(np.float32), np.arange(9) % 3)
    val_split = Split(rng.normal(size=(3, 28, 28)).astype(np.float32), np.arange(3))
    config = train_cnn.TrainConfig(architecture=architecture, epochs=1, batch_size=4, lr=0.01, augment=False)
    _, history = train_cnn.train(config, train_split, val_split, 3, normalization=NORM)
    assert len(history) == 1 and np.isfinite(history[0].train_loss)


@pytest.mark.parametrize("total_steps", [1, 2, 4, 5])
def test_one_cycle_schedules_runs_of_a_few_steps(total_steps: int) -> None:
    """OneCycleLR divides by zero when its warm-up is under one step; small folders give runs that short."""
    model = torch.nn.Linear(2, 2)
    config = train_cnn.TrainConfig(epochs=total_steps)
    optimizer = train_cnn.make_optimizer(config, model)
    scheduler = train_cnn.make_scheduler(config, optimizer, steps_per_epoch=1)
    for _ in range(total_steps):
        optimizer.step()
        scheduler.step()
    assert 0 < optimizer.param_groups[0]["lr"] <= config.lr


@pytest.mark.slow
def test_the_job_fine_tunes_from_the_weights_channel_and_the_model_serves(tmp_path: Path, run_job_script,
                                                                         weights_file: Path) -> None:
    from inference import inference
    from tests.helpers.jobs import training_env
    from tests.training.test_formats import make_image_folder

    data = make_image_folder(tmp_path / "raw", {"ant": 12, "bee": 12}, size=28, mode="L")
    splits = tmp_path / "splits"
    prep = run_job_script("preprocess.py", ["--input-dir", str(data), "--output-dir", str(splits),
                                            "--data-format", "image-folder", "--image-size", "28"])
    assert prep.returncode == 0, prep.stderr
    channel = tmp_path / "weights"
    channel.mkdir()
    (channel / "resnet18.pth").write_bytes(weights_file.read_bytes())
    env = {**training_env(splits / "train", splits / "validation", tmp_path / "model", tmp_path / "output"),
           "SM_CHANNEL_WEIGHTS": str(channel)}
    job = run_job_script("train_cnn.py", ["--architecture", "resnet18", "--epochs", "2", "--batch-size", "4",
                                          "--lr", "0.01"], env)
    assert job.returncode == 0, job.stderr
    assert f"resnet18: loaded pretrained weights from {channel / 'resnet18.pth'} (120 tensors)" in job.stderr
    assert "11177538 parameters (8394754 trainable)" in job.stderr
    config = json.loads((tmp_path / "model" / "model_config.json").read_text())
    assert config["architecture"] == "resnet18" and config["class_names"] == ["ant", "bee"]
    model = inference.model_fn(str(tmp_path / "model"))
    pixels = np.full((28, 28), 40.0, dtype=np.float32)  # one image: model_input answers it as one object
    answer = json.loads(inference.output_fn(inference.predict_fn(inference.Batch(pixels), model),
                                            "application/json")[0])
    assert answer["class_name"] in ("ant", "bee") and len(answer["top_k"]) == 2

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "weights.pth").write_bytes(b"garbage")
    failed = run_job_script("train_cnn.py", ["--architecture", "resnet18", "--epochs", "1"],
                            {**env, "SM_MODEL_DIR": str(tmp_path / "model2"), "SM_CHANNEL_WEIGHTS": str(bad)})
    assert failed.returncode == 2 and f"pretrained weights {bad / 'weights.pth'}" in failed.stderr
    assert not (tmp_path / "model2").exists()
