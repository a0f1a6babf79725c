"""Dynamic batching: overlapping requests share forward passes, each gets its own rows, a lone one never waits."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mlops.serve.batching import Batcher


class SlowModel:
    """Echoes each image's first pixel as its 'probability'; records the batch sizes it was called with."""

    def __init__(self, seconds: float = 0.005) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.sizes.append(len(pixels))
        time.sleep(self.seconds)
        return pixels[:, :1, 0].copy()


def images(tag: int, n: int = 1) -> np.ndarray:
    return np.full((n, 28, 28), float(tag), dtype=np.float32)


def concurrently(batcher: Batcher, clients: int, per_client: int, sizes=(1,)) -> list[str]:
    failures: list[str] = []

    def client(index: int) -> None:
        for j in range(per_client):
            n = sizes[(index + j) % len(sizes)]
            tag = index * 1000 + j
            out = batcher.submit(images(tag, n))
            if out.shape != (n, 1) or not np.all(out == tag):
                failures.append(f"client {index} request {j}: got {out.ravel()[:3]} for {tag}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    return failures


def test_overlapping_requests_share_forward_passes_and_get_their_own_rows():
    model = SlowModel()
    batcher = Batcher(model, max_batch=8)
    assert concurrently(batcher, clients=8, per_client=20, sizes=(1, 2, 3)) == []
    assert batcher.requests == 160
    assert max(model.sizes) > 1 and batcher.batches < 160 * 0.6, model.sizes[:20]
    assert all(size <= 8 for size in model.sizes)


def test_a_request_larger_than_max_batch_runs_alone():
    model = SlowModel(0)
    batcher = Batcher(model, max_batch=4)
    assert batcher.submit(images(7, 10)).shape == (10, 1) and model.sizes == [10]


def test_a_lone_request_does_not_wait_without_max_delay():
    model = SlowModel(0)
    batcher = Batcher(model, max_batch=32)
    began = time.perf_counter()
    for i in range(200):
        assert batcher.submit(images(i))[0, 0] == i
    assert (time.perf_counter() - began) / 200 < 0.002
    assert model.sizes == [1] * 200


def test_max_delay_gathers_requests_and_bounds_the_wait():
    model = SlowModel(0)
    batcher = Batcher(model, max_batch=64, max_delay=0.02)
    began = time.perf_counter()
    batcher.submit(images(1))
    assert 0.015 <= time.perf_counter() - began < 0.5
    assert concurrently(batcher, clients=6, per_client=5) == []
    assert max(model.sizes) > 1


def test_an_error_reaches_every_caller_and_the_batcher_recovers():
    calls = {"n": 0}

    def flaky(pixels: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return pixels[:, :1, 0]

    batcher = Batcher(flaky, max_batch=4)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(images(1))
    assert batcher.submit(images(2))[0, 0] == 2


@pytest.mark.parametrize(("max_batch", "max_delay"), [(0, 0), (1025, 0), (8, -1), (8, 0.5)])
def test_bounds_are_enforced(max_batch, max_delay):
    with pytest.raises(ValueError, match="expected"):
        Batcher(SlowModel(), max_batch, max_delay)


@pytest.mark.parametrize("name, value", [("MLOPS_MAX_BATCH", "lots"), ("MLOPS_MAX_DELAY_MS", "soon")])
def test_a_batching_variable_that_is_not_a_number_is_named(monkeypatch, tmp_path, name, value):
    from mlops.serve.server import create_app
    from tests.helpers.models import write_xgboost_model_dir

    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=f"\\${name}='{value}' is not"):
        create_app(write_xgboost_model_dir(tmp_path / "model"))
