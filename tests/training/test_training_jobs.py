"""The job chain on a slice of real MNIST: CNN and XGBoost training, evaluation, and their contracts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training import train_cnn
from training.metrics import CNN_METRIC_DEFINITIONS, XGBOOST_METRIC_DEFINITIONS, parse_metrics
from training.models import build_model, count_parameters

pytestmark = pytest.mark.slow

QUALITY_KEYS = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1")


def test_cnn_learns_far_better_than_chance(job_chain: dict) -> None:
    metrics = parse_metrics(job_chain["cnn_log"], CNN_METRIC_DEFINITIONS)
    assert metrics["epoch"] == [1.0, 2.0, 3.0], "one metrics line per epoch"
    assert len(metrics["train:loss"]) == len(metrics["validation:loss"]) == 3
    assert metrics["validation:accuracy"][-1] >= 0.85, metrics  # 10 classes: chance is 0.10
    assert metrics["train:loss"][-1] < metrics["train:loss"][0]


def test_cnn_model_dir_has_the_serving_layout(job_chain: dict) -> None:
    model_dir: Path = job_chain["cnn_model"]
    config = json.loads((model_dir / "model_config.json").read_text())
    assert config["framework"] == "pytorch" and config["architecture"] == "compact"
    assert config["class_names"] == [str(i) for i in range(10)]
    state = torch.load(model_dir / "model.pth", weights_only=True)
    net = build_model(config["architecture"], config["num_classes"], kernel_size=config["kernel_size"],
                      width=config["width"], dropout=config["dropout"])
    net.load_state_dict(state)
    assert {"inference.py", "models.py", "requirements.txt"} <= {p.name for p in (model_dir / "code").iterdir()}
    history = json.loads((job_chain["cnn_output"] / "data" / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert (job_chain["cnn_output"] / "data" / "learning_curves.png").stat().st_size > 10_000


def test_xgboost_baseline_metrics_and_model(job_chain: dict) -> None:
    metrics = parse_metrics(job_chain["xgb_log"], XGBOOST_METRIC_DEFINITIONS)
    assert metrics["validation:accuracy"][-1] >= 0.80, metrics
    assert metrics["validation:mlogloss"][-1] < metrics["validation:mlogloss"][0]
    model_json = json.loads((job_chain["xgb_model"] / "xgboost-model.json").read_text())
    assert "learner" in model_json  # XGBoost's own JSON format, never a pickle
    config = json.loads((job_chain["xgb_model"] / "model_config.json").read_text())
    assert config["framework"] == "xgboost" and config["num_classes"] == 10


def test_evaluation_json_follows_the_model_quality_format(job_chain: dict) -> None:
    evaluation = json.loads((job_chain["evaluation"] / "evaluation.json").read_text())
    for block in (evaluation["multiclass_classification_metrics"],
                  evaluation["baseline"]["multiclass_classification_metrics"]):
        for key in QUALITY_KEYS:
            assert set(block[key]) == {"value", "standard_deviation"}
            assert 0.0 <= block[key]["value"] <= 1.0 and block[key]["standard_deviation"] >= 0.0
            assert block[f"{key}_best_constant_classifier"]["value"] < 0.2
        matrix = block["confusion_matrix"]
        assert list(matrix) == [str(i) for i in range(10)]
        assert sum(sum(row.values()) for row in matrix.values()) == 1000
        diagonal = sum(matrix[c][c] for c in matrix)
        assert diagonal / 1000 == pytest.approx(block["accuracy"]["value"])
    cnn = evaluation["multiclass_classification_metrics"]["accuracy"]
    assert cnn["value"] > 0.85 and 0 < cnn["standard_deviation"] < 0.05
    assert evaluation["baseline"]["model"] == "xgboost"
    assert (job_chain["evaluation"] / "confusion_matrix.png").stat().st_size > 10_000


def test_missing_channel_fails_with_a_clear_message(tmp_path: Path, run_job_script, mnist_slice: Path) -> None:
    env = {"SM_CHANNEL_TRAIN": str(mnist_slice / "train"), "SM_CHANNEL_VALIDATION": str(tmp_path / "absent"),
           "SM_MODEL_DIR": str(tmp_path / "model"), "SM_OUTPUT_DIR": str(tmp_path / "output"),
           "SM_OUTPUT_DATA_DIR": str(tmp_path / "output" / "data")}
    result = run_job_script("train_cnn.py", ["--epochs", "1"], env)
    assert result.returncode == 2
    assert "input channel 'validation' not found" in result.stderr
    assert not (tmp_path / "model").exists()
    assert "input channel 'validation'" in (tmp_path / "output" / "failure").read_text()


def test_bad_hyperparameter_is_refused(tmp_path: Path, run_job_script, mnist_slice: Path) -> None:
    env = {"SM_CHANNEL_TRAIN": str(mnist_slice / "train"), "SM_CHANNEL_VALIDATION": str(mnist_slice / "validation"),
           "SM_MODEL_DIR": str(tmp_path / "model"), "SM_OUTPUT_DIR": str(tmp_path / "output")}
    result = run_job_script("train_cnn.py", ["--architecture", "resnet9000", "--epochs", "0"], env)
    assert result.returncode == 2
    assert "epochs must be >= 1" in result.stderr and "architecture must be one of" in result.stderr


def test_evaluate_refuses_a_missing_model(tmp_path: Path, run_job_script, mnist_slice: Path, job_chain: dict) -> None:
    result = run_job_script("evaluate.py", ["--cnn-model-dir", str(tmp_path / "none"),
                                            "--xgboost-model-dir", str(job_chain["xgb_model"]),
                                            "--test-dir", str(mnist_slice / "test"), "--output-dir", str(tmp_path / "ev")])
    assert result.returncode == 2 and "scored model input" in result.stderr
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("architecture", ["compact", "keras", "dense"])
@pytest.mark.parametrize("kernel_size", [3, 5, 7])
def test_architectures_build_and_run(architecture: str, kernel_size: int) -> None:
    net = build_model(architecture, 10, kernel_size=kernel_size)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    if architecture == "dense":
        assert not any(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    if architecture == "compact" and kernel_size == 3:  # the reference design: under 20K parameters
        assert count_parameters(net) < 20_000
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("architecture", ["compact", "keras", "dense"])
@pytest.mark.parametrize(("channels", "size"), [(1, 20), (3, 32), (3, 48)])
def test_architectures_adapt_to_channels_and_size(architecture: str, channels: int, size: int) -> None:
    net = build_model(architecture, 5, in_channels=channels, image_size=size)
    assert net(torch.zeros(2, channels, size, size)).shape == (2, 5)


def test_too_small_images_for_the_keras_net_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="kernel_size=3 is too large for 16x16 images"):
        build_model("keras", 5, image_size=16)


def test_augmentation_keeps_shape_and_background() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.full((16, 1, 28, 28), -0.42)
    out = train_cnn.augment_batch(x, 7.0, 8, 1.0, -0.42, generator)
    assert out.shape == x.shape
    assert torch.allclose(out, x, atol=1e-5)  # rotating or cutting a blank image changes nothing
    x[:, :, 3:25, 3:25] = 2.0
    out = train_cnn.augment_batch(x, 0.0, 8, 1.0, -0.42, generator)
    assert (out != x).any(dim=(1, 2, 3)).all()  # cutout_prob=1: every image lost a square
    cut = (out != x).sum(dim=(1, 2, 3))
    assert (cut <= 64).all() and (cut > 0).all()
    out = train_cnn.augment_batch(x, 0.0, 8, 0.0, -0.42, generator)
    assert torch.equal(out, x)  # cutout_prob=0: untouched


def test_stratified_fraction_keeps_every_class(mnist_slice: Path) -> None:
    from training.datasets import load_split

    split = load_split(mnist_slice / "train", "train")
    part = train_cnn.stratified_fraction(split, 0.1, seed=1)
    assert 260 <= len(part) <= 280
    assert (np.bincount(part.labels, minlength=10) > 0).all()


def test_cnn_threads_follow_the_local_cpu_grant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grant = tmp_path / "cpu-grant"
    grant.write_text("1\n")
    monkeypatch.setenv("MLOPS_CPU_GRANT_FILE", str(grant))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train_cnn.follow_cpu_grant(train_cnn.TrainConfig(num_threads=2))
        assert torch.get_num_threads() == 2  # an explicit num-threads wins
        train_cnn.follow_cpu_grant(train_cnn.TrainConfig())
        assert torch.get_num_threads() == 1
        grant.write_text("garbled")
        train_cnn.follow_cpu_grant(train_cnn.TrainConfig())
        assert torch.get_num_threads() == 1  # an unreadable grant changes nothing
    finally:
        torch.set_num_threads(before)


def test_xgboost_threads_follow_the_local_cpu_grant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xgboost as xgb

    from training.train_xgboost import FollowCpuGrant

    grant = tmp_path / "cpu-grant"
    grant.write_text("1\n")
    monkeypatch.setenv("MLOPS_CPU_GRANT_FILE", str(grant))
    rng = np.random.default_rng(0)
    data = xgb.DMatrix(rng.random((200, 8)), label=rng.integers(0, 2, 200))
    follower = FollowCpuGrant(2)
    booster = xgb.train({"nthread": 2, "objective": "binary:logistic"}, data, num_boost_round=3, callbacks=[follower])
    assert follower.nthread == 1
    assert json.loads(booster.save_config())["learner"]["generic_param"]["nthread"] == "1"


def test_precision_auto_uses_bfloat16_only_where_the_cpu_has_it() -> None:
    assert train_cnn.autocast_dtype("fp32") is None
    assert train_cnn.autocast_dtype("bf16") is torch.bfloat16
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert train_cnn.autocast_dtype("auto") is (torch.bfloat16 if native else None)
    with pytest.raises(ValueError, match="precision must be one of"):
        train_cnn.parse_args(["--precision", "fp16"])


def test_a_batch_too_large_for_the_data_is_lowered_to_keep_enough_steps() -> None:
    from training.train_common import MIN_FITTED_BATCH, MIN_STEPS_PER_EPOCH, fit_batch_size

    config = train_cnn.TrainConfig(batch_size=256)
    assert fit_batch_size(config, 54_000) is config  # full MNIST: 210 steps per epoch, untouched
    assert fit_batch_size(config, 2_700).batch_size == 2_700 // MIN_STEPS_PER_EPOCH
    assert fit_batch_size(config, 100).batch_size == MIN_FITTED_BATCH
    assert fit_batch_size(train_cnn.TrainConfig(batch_size=8), 100).batch_size == 8  # small already
